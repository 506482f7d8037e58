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

// What identifies a file's bytes cheaply: its size, inode and change time. Any
// write, truncation, replacement or chmod of the file changes it (the kernel sets
// ctime; nobody can set it back), so a blob whose identity is the one recorded when
// its bytes were last hashed still holds those bytes, barring media errors below
// the filesystem.
struct file_identity {
  std::uint64_t size = 0;
  std::uint64_t inode = 0;
  std::int64_t ctime_ns = 0;
  bool same_file_as(const file_identity& o) const { return inode == o.inode && ctime_ns == o.ctime_ns; }
};

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
  // Cuts the file to `size` bytes.
  virtual void truncate(int fd, std::uint64_t size, boost::system::error_code& ec) = 0;
  // Makes a rename into `dir` durable (the directory's own fsync).
  virtual void fsync_dir(const std::string& dir, boost::system::error_code& ec) = 0;
  virtual void close(int fd) = 0;
  virtual void rename(const std::string& from, const std::string& to, boost::system::error_code& ec) = 0;
  virtual void remove(const std::string& path) = 0;
  virtual std::optional<std::uint64_t> file_size(const std::string& path) = 0;
  virtual void make_dirs(const std::string& path, boost::system::error_code& ec) = 0;
  virtual std::vector<std::string> list(const std::string& dir) = 0;  // names, no . or ..
  virtual std::uint64_t capacity(const std::string& dir) = 0;         // the filesystem's size in bytes
  virtual file_identity identify(int fd, boost::system::error_code& ec) = 0;
  // Takes an exclusive advisory lock on a directory, held until close(returned fd).
  // Fails (EWOULDBLOCK) when another process holds it.
  virtual int lock_dir(const std::string& dir, boost::system::error_code& ec) = 0;
};

std::shared_ptr<filesystem> posix_filesystem();

// Passes every call to another filesystem: a test's faulting filesystem derives
// from it and overrides only what it breaks.
class forwarding_filesystem : public filesystem {
 public:
  explicit forwarding_filesystem(std::shared_ptr<filesystem> to = posix_filesystem()) : to_(std::move(to)) {}
  int create(const std::string& path, boost::system::error_code& ec) override { return to_->create(path, ec); }
  int open_read(const std::string& path, boost::system::error_code& ec) override { return to_->open_read(path, ec); }
  std::size_t pwrite(int fd, const void* data, std::size_t size, std::uint64_t offset,
                     boost::system::error_code& ec) override {
    return to_->pwrite(fd, data, size, offset, ec);
  }
  std::size_t pread(int fd, void* data, std::size_t size, std::uint64_t offset,
                    boost::system::error_code& ec) override {
    return to_->pread(fd, data, size, offset, ec);
  }
  void fsync(int fd, boost::system::error_code& ec) override { to_->fsync(fd, ec); }
  void truncate(int fd, std::uint64_t size, boost::system::error_code& ec) override { to_->truncate(fd, size, ec); }
  void fsync_dir(const std::string& dir, boost::system::error_code& ec) override { to_->fsync_dir(dir, ec); }
  void close(int fd) override { to_->close(fd); }
  void rename(const std::string& from, const std::string& to, boost::system::error_code& ec) override {
    to_->rename(from, to, ec);
  }
  void remove(const std::string& path) override { to_->remove(path); }
  std::optional<std::uint64_t> file_size(const std::string& path) override { return to_->file_size(path); }
  void make_dirs(const std::string& path, boost::system::error_code& ec) override { to_->make_dirs(path, ec); }
  std::vector<std::string> list(const std::string& dir) override { return to_->list(dir); }
  std::uint64_t capacity(const std::string& dir) override { return to_->capacity(dir); }
  file_identity identify(int fd, boost::system::error_code& ec) override { return to_->identify(fd, ec); }
  int lock_dir(const std::string& dir, boost::system::error_code& ec) override { return to_->lock_dir(dir, ec); }

 private:
  std::shared_ptr<filesystem> to_;
};

}  // namespace berth::store
