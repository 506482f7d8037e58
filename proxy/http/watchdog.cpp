#include "http/watchdog.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <fstream>
#include <iterator>

namespace berth::http {

namespace {
std::int64_t ticks() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

watchdog::watchdog(std::vector<boost::asio::io_context*> loops, std::chrono::milliseconds limit, stuck_fn on_stuck)
    : loops_(std::move(loops)),
      limit_(limit),
      on_stuck_(std::move(on_stuck)),
      beats_(new std::atomic<std::int64_t>[loops_.size()], std::default_delete<std::atomic<std::int64_t>[]>()) {
  const auto now = ticks();
  for (std::size_t i = 0; i < loops_.size(); ++i) beats_.get()[i] = now;
}

watchdog::~watchdog() {
  stop();
}

void watchdog::start() {
  thread_ = std::thread([this] { run(); });
}

void watchdog::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool watchdog::live() const {
  const auto now = ticks();
  for (std::size_t i = 0; i < loops_.size(); ++i) {
    if (now - beats_.get()[i].load(std::memory_order_relaxed) > limit_.count() / 2) return false;
  }
  return true;
}

void watchdog::run() {
  // Beat often enough that a healthy loop is never close to half the limit.
  const auto interval = std::max(std::chrono::milliseconds(50), limit_ / 10);
  std::unique_lock lock(mu_);
  while (!stopping_) {
    for (std::size_t i = 0; i < loops_.size(); ++i) {
      boost::asio::post(*loops_[i], [beats = beats_, i] { beats.get()[i].store(ticks(), std::memory_order_relaxed); });
    }
    cv_.wait_for(lock, interval, [this] { return stopping_; });
    if (stopping_) break;
    const auto now = ticks();
    for (std::size_t i = 0; i < loops_.size(); ++i) {
      const auto late = now - beats_.get()[i].load(std::memory_order_relaxed);
      if (late > limit_.count()) {
        lock.unlock();
        on_stuck_(i, std::chrono::milliseconds(late));
        return;
      }
    }
  }
}

std::string take_exit_record(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::string text(std::istreambuf_iterator<char>(in), {});
  ::unlink(path.c_str());
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text;
}

void record_exit(const std::string& path, const std::string& reason) {
  // Plain system calls: this runs while a worker is wedged, maybe holding a lock
  // the C++ streams need.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string line = reason + "\n";
  [[maybe_unused]] auto n = ::write(fd, line.data(), line.size());
  ::fsync(fd);
  ::close(fd);
}

}  // namespace berth::http
