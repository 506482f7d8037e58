#pragma once
// Catches a worker whose event loop has stopped turning (a blocking call, a
// deadlock, an endless loop). Such a Berth still accepts connections, so containerd
// waits on it instead of falling back to the registry; exiting is the useful thing
// to do: containerd then falls back at once and the kubelet restarts Berth.
//
// A thread of its own posts a heartbeat to every loop each `interval`; a loop whose
// last heartbeat is older than `limit` is stuck, and `on_stuck` runs (on the
// watchdog's thread; it is expected to exit the process). `live()` is false as soon
// as any loop is late by more than half the limit, for /healthz.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace berth::http {

class watchdog {
 public:
  using stuck_fn = std::function<void(std::size_t loop, std::chrono::milliseconds late)>;

  watchdog(std::vector<boost::asio::io_context*> loops, std::chrono::milliseconds limit, stuck_fn on_stuck);
  ~watchdog();
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

  void start();
  void stop();
  bool live() const;

 private:
  void run();

  std::vector<boost::asio::io_context*> loops_;
  std::chrono::milliseconds limit_;
  stuck_fn on_stuck_;
  // Heartbeats as steady_clock ticks, one per loop, written by that loop. Shared with
  // the posted heartbeats: one may still run after the watchdog is gone (found by TSan).
  std::shared_ptr<std::atomic<std::int64_t>[]> beats_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
};

// The reason a previous run left behind (see record_exit), removed once read; empty
// when there is none. `path` is a file in a directory that survives restarts.
std::string take_exit_record(const std::string& path);
// Writes why this process is about to exit, for the next run to report.
void record_exit(const std::string& path, const std::string& reason);

}  // namespace berth::http
