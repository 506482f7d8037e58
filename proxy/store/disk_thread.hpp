#pragma once
// The blob store's one thread for blocking disk work: fsync, rename, the directory
// fsync, index writes, eviction and unlinks run here, in the order they were handed
// over, so an I/O thread never waits on the disk. Tasks must not throw (one that
// does is logged and counted, and the thread carries on).
#include <boost/asio/awaitable.hpp>
#include <functional>
#include <memory>

namespace berth::metrics {
class registry;
}

namespace berth::store {

class disk_thread {
 public:
  explicit disk_thread(metrics::registry& metrics);
  // Runs everything still queued, then joins.
  ~disk_thread();
  disk_thread(const disk_thread&) = delete;
  disk_thread& operator=(const disk_thread&) = delete;

  void post(std::function<void()> task);
  // Runs `task` on the disk thread; the caller resumes on its own executor after.
  boost::asio::awaitable<void> run(std::function<void()> task);
  // Returns once every task posted before the call (and what they posted) has run.
  void flush();
  bool in_this_thread() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace berth::store
