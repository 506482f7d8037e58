#pragma once
// Hand-over of the listening sockets from a running Berth to the one replacing it,
// over a Unix socket (SCM_RIGHTS), as nginx's binary upgrade and Envoy's hot restart
// do. The sockets themselves change hands, not copies bound beside them: their
// accept queues go with them, so no connection waiting to be accepted is reset
// (closing one of several SO_REUSEPORT listeners would reset those queued on it).
//
// The exchange, on one connection to `path`:
//   successor connects            -> runner sends "berth-handover 1\n<name> <address>\n..."
//                                    with one descriptor per line (SCM_RIGHTS)
//   successor accepts on them     -> successor sends "accepting\n"
//   runner stops accepting, drains its connections, closes its cache
//                                 -> runner sends "released\n" (the cache lock is free)
// A successor that goes away before "accepting" leaves the runner as it was.
//
// Blocking POSIX calls on a thread of the runner's own (never an I/O thread), and
// at start-up in the successor.
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

namespace berth::metrics {
class registry;
}

namespace berth::http {

// What a successor received: listening descriptors by listener name, and the
// connection on which the runner will say that its cache is released.
class inherited_listeners {
 public:
  inherited_listeners() = default;
  inherited_listeners(std::map<std::string, int> fds, std::map<std::string, std::string> addresses, int channel);
  ~inherited_listeners();
  inherited_listeners(inherited_listeners&& other) noexcept;
  inherited_listeners& operator=(inherited_listeners&& other) noexcept;
  inherited_listeners(const inherited_listeners&) = delete;
  inherited_listeners& operator=(const inherited_listeners&) = delete;

  // Whether a predecessor handed anything over (still true once all is taken).
  bool received() const { return received_; }
  // Whether the descriptor for `name` is bound to `address` (a changed listen address,
  // or port 0, binds afresh).
  bool offers(const std::string& name, const std::string& address) const;
  // The descriptor for `name` if it offers `address`, now owned by the caller; -1
  // otherwise.
  int take(const std::string& name, const std::string& address);
  // Closes what was not taken (a listener the new config no longer has): a socket
  // nobody accepts on must not hold connections.
  void close_untaken();
  // Tells the runner that this process accepts on what it took: it stops accepting.
  void confirm();
  // Waits up to `limit` for the runner to release its cache (it said so, or it is
  // gone). True when released.
  bool wait_released(std::chrono::milliseconds limit);

 private:
  void close_all();
  std::map<std::string, int> fds_;
  std::map<std::string, std::string> addresses_;
  int channel_ = -1;
  bool received_ = false;
};

// Successor side: asks whoever serves `path` for its listeners. Nothing received when nobody
// does (no file, a stale one, a refusal); throws only on a broken exchange.
inherited_listeners take_over(const std::string& path);

// Runner side: serves one hand-over on `path` (replacing a stale file) until
// destroyed. `listeners` gives the descriptors to pass (name -> {address, fd}; the
// fds stay the caller's). Once a successor accepts on them, `handed_over` runs on
// the hand-over thread with the connection to it, now the callee's: it stops
// accepting, drains, and when its cache is closed calls send_released() on it.
class handover_server {
 public:
  struct listener {
    std::string address;
    int fd;
  };
  handover_server(std::string path, std::function<std::map<std::string, listener>()> listeners,
                  std::function<void(int channel)> handed_over, metrics::registry& metrics);
  ~handover_server();
  handover_server(const handover_server&) = delete;
  handover_server& operator=(const handover_server&) = delete;

 private:
  void run();
  bool serve_one(int conn);
  std::string path_;
  std::function<std::map<std::string, listener>()> listeners_;
  std::function<void(int)> handed_over_;
  metrics::registry& metrics_;
  int sock_ = -1;
  int wake_[2] = {-1, -1};
  unsigned long long inode_ = 0;
  bool handed_ = false;
  std::thread thread_;
};

// Tells the successor on `channel` that the cache is free, and closes it.
void send_released(int channel);

}  // namespace berth::http
