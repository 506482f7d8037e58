#pragma once
// The blob store's one seam to the operating system (leveldb's Env). Production
// uses posix_filesystem(); tests swap in one that fails (ENOSPC, short writes).
// Thread-safe: implementations hold no per-call state.
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace berth::store {

class filesystem {
 public:
  virtual ~filesystem() = default;
  // Creates a new file for writing (fails if it exists).
  virtual int create(const std::string& path, boost::system::error_code& ec) = 0;
  virtual int open_read(const std::string& path, boost::system::error_code& ec) = 0;
  // May write fewer bytes than asked (a short write); 0 with ec on failure.
  virtual std::size_t pwrite(int fd, const void* data, std::size_t size, std::uint64_t offset,
                             boost::system::error_code& ec) = 0;
  virtual std::size_t pread(int fd, void* data, std::size_t size, std::uint64_t offset,
                            boost::system::error_code& ec) = 0;
  virtual void fsync(int fd, boost::system::error_code& ec) = 0;
  virtual void close(int fd) = 0;
  virtual void rename(const std::string& from, const std::string& to, boost::system::error_code& ec) = 0;
  virtual void remove(const std::string& path) = 0;
  virtual std::optional<std::uint64_t> file_size(const std::string& path) = 0;
  virtual void make_dirs(const std::string& path, boost::system::error_code& ec) = 0;
  virtual std::vector<std::string> list(const std::string& dir) = 0;  // names, no . or ..
  virtual std::uint64_t capacity(const std::string& dir) = 0;         // the filesystem's size in bytes
};

std::shared_ptr<filesystem> posix_filesystem();

}  // namespace berth::store
