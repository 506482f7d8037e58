#include "store/filesystem.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

namespace berth::store {
namespace {

using boost::system::error_code;

error_code last_error() {
  return {errno, boost::system::system_category()};
}

class posix final : public filesystem {
 public:
  int create(const std::string& path, error_code& ec) override {
    const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) ec = last_error();
    return fd;
  }
  int open_read(const std::string& path, error_code& ec) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) ec = last_error();
    return fd;
  }
  std::size_t pwrite(int fd, const void* data, std::size_t size, std::uint64_t offset, error_code& ec) override {
    while (true) {
      const ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno == EINTR) continue;
      ec = last_error();
      return 0;
    }
  }
  std::size_t pread(int fd, void* data, std::size_t size, std::uint64_t offset, error_code& ec) override {
    while (true) {
      const ssize_t n = ::pread(fd, data, size, static_cast<off_t>(offset));
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno == EINTR) continue;
      ec = last_error();
      return 0;
    }
  }
  void fsync_dir(const std::string& dir, error_code& ec) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      ec = last_error();
      return;
    }
    if (::fsync(fd) != 0) ec = last_error();
    ::close(fd);
  }
  void fsync(int fd, error_code& ec) override {
    if (::fsync(fd) != 0) ec = last_error();
  }
  void truncate(int fd, std::uint64_t size, error_code& ec) override {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) ec = last_error();
  }
  void close(int fd) override { ::close(fd); }
  void rename(const std::string& from, const std::string& to, error_code& ec) override {
    if (::rename(from.c_str(), to.c_str()) != 0) ec = last_error();
  }
  void remove(const std::string& path) override { ::unlink(path.c_str()); }
  std::optional<std::uint64_t> file_size(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
    return static_cast<std::uint64_t>(st.st_size);
  }
  void make_dirs(const std::string& path, error_code& ec) override {
    std::error_code e;
    std::filesystem::create_directories(path, e);
    if (e) ec = {e.value(), boost::system::system_category()};
  }
  std::vector<std::string> list(const std::string& dir) override {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return out;
    while (auto* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") out.push_back(name);
    }
    ::closedir(d);
    return out;
  }
  std::uint64_t capacity(const std::string& dir) override {
    struct statvfs st {};
    if (::statvfs(dir.c_str(), &st) != 0) return 0;
    return static_cast<std::uint64_t>(st.f_blocks) * st.f_frsize;
  }
  file_identity identify(int fd, error_code& ec) override {
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ec = last_error();
      return {};
    }
    return {static_cast<std::uint64_t>(st.st_size), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec};
  }
  int lock_dir(const std::string& dir, error_code& ec) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      ec = last_error();
      return -1;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ec = last_error();
      ::close(fd);
      return -1;
    }
    return fd;
  }
};

}  // namespace

std::shared_ptr<filesystem> posix_filesystem() {
  return std::make_shared<posix>();
}

}  // namespace berth::store
