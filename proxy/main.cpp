// Berth: the command line, and the only place that wires the modules together.
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <thread>

#include "config/config.hpp"
#include "containerd/hosts_toml.hpp"
#include "core/hasher.hpp"
#include "core/log.hpp"
#include "http/handlers.hpp"
#include "http/handover.hpp"
#include "http/server.hpp"
#include "http/watchdog.hpp"
#include "meta/cache.hpp"
#include "meta/local_db.hpp"
#include "meta/redis.hpp"
#include "metrics/metrics.hpp"
#include "mirror/mirror.hpp"
#include "mirror/registry_table.hpp"
#include "peer/allow_list.hpp"
#include "peer/cluster.hpp"
#include "peer/directory.hpp"
#include "peer/endpoint.hpp"
#include "peer/tls.hpp"
#include "store/blob_store.hpp"
#include "upstream/client.hpp"
#include "upstream/credentials.hpp"
#include "upstream/token_cache.hpp"

namespace asio = boost::asio;
using namespace berth;

namespace {

// File descriptors, shared out at start-up. The soft RLIMIT_NOFILE is raised to the
// hard limit; a reserve covers what is not per client connection: the process's own
// (listeners, logs, Redis), three per event loop (epoll, eventfd, timerfd), the two
// RocksDB databases' open files, and the idle upstream connections each worker may
// pool per registry. Each client connection may hold three at once (its socket, a
// cache or temp file, an upstream connection). Connection limits left at 0 are fitted
// to that; configured ones beyond it are kept, with a warning.
struct descriptor_budget {
  std::size_t limit = 0;
  std::size_t reserve = 0;
  std::size_t mirror = 0;
  std::size_t admin = 0;
  std::size_t peer = 0;  // the peer endpoint's connections (0: no peer listener)
};

// `peer_wanted`: connections the peer endpoint should take (0: none), each holding
// `peer_each` descriptors.
descriptor_budget plan_descriptors(const http::server_options& s, std::size_t threads, std::size_t registries,
                                   std::size_t idle_per_host, std::size_t peer_wanted, std::size_t peer_each) {
  rlimit r{};
  getrlimit(RLIMIT_NOFILE, &r);
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < r.rlim_max) {
    rlimit raised = r;
    raised.rlim_cur = r.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) r = raised;
  }
  descriptor_budget b;
  b.limit = r.rlim_cur == RLIM_INFINITY ? std::size_t{1} << 20 : static_cast<std::size_t>(r.rlim_cur);
  const std::size_t reserve = 32 + 3 * (threads + 1) + (64 + 8) + (32 + 8) + threads * registries * idle_per_host;
  b.reserve = reserve;
  const std::size_t per_connection = 3;
  const std::size_t fits = b.limit > reserve + 2 * per_connection ? (b.limit - reserve) / per_connection : 2;
  b.admin = s.admin_max_connections ? s.admin_max_connections : std::clamp<std::size_t>(fits / 8, 1, 64);
  // Other nodes' asks: a few per upload place (HEADs, askers turned away busy), never
  // more than a quarter of what fits.
  b.peer = peer_wanted == 0 ? 0
                            : std::clamp<std::size_t>(peer_wanted, 1,
                                                      std::max<std::size_t>(fits * per_connection / 4 / peer_each, 1));
  const std::size_t peer_units = (b.peer * peer_each + per_connection - 1) / per_connection;
  const std::size_t others = std::min(fits - 1, b.admin + peer_units);
  b.mirror = s.max_connections ? s.max_connections : std::clamp<std::size_t>(fits - others, 1, 16384);
  if (b.mirror + b.admin + peer_units > fits) {
    log::warn("descriptors_short", {{"nofile", static_cast<unsigned long long>(b.limit)},
                                    {"max_connections", static_cast<unsigned long long>(b.mirror)},
                                    {"admin_max_connections", static_cast<unsigned long long>(b.admin)},
                                    {"peer_connections", static_cast<unsigned long long>(b.peer)},
                                    {"detail",
                                     "connections may exhaust file descriptors; raise the nofile limit or "
                                     "lower clients.max_connections"}});
  }
  return b;
}

// A worker thread's event loop. An exception that reaches it (none should) is
// logged and the loop goes on: it must never end the process.
void run_worker(asio::io_context& ctx, std::size_t index) {
  for (;;) {
    try {
      ctx.run();
      return;
    } catch (const std::exception& e) {
      log::error("worker_exception", {{"worker", static_cast<unsigned>(index)}, {"error", e.what()}});
    }
  }
}

// Everything a running Berth holds. Built once by serve(); see the note at its end
// about tear-down.
struct runtime {
  config::settings settings;
  metrics::registry metrics;
  upstream::token_cache tokens;
  std::vector<std::unique_ptr<upstream::registry>> registries;
  std::shared_ptr<meta::redis_client> backend;  // metadata.redis: shared metadata and the blob directory
  std::shared_ptr<peer::directory> directory;   // blob sharing (peers.listen): what each node holds
  peer::tls_contexts peer_tls;                  // peers.tls: null contexts without it
  std::unique_ptr<store::blob_store> store;
  std::unique_ptr<meta::cache> metadata;
  std::unique_ptr<peer::cluster> cluster;
  std::vector<std::unique_ptr<asio::io_context>> workers;
  std::vector<std::unique_ptr<upstream::client>> clients;
  std::vector<std::unique_ptr<mirror::mirror>> mirrors;
  std::unique_ptr<mirror::registry_table> table;
  std::unique_ptr<peer::endpoint> peer_endpoint;  // served by `pull`, on its own port (peers.listen)
  std::unique_ptr<http::server> pull;
  std::unique_ptr<http::server> admin;
  std::unique_ptr<http::watchdog> watchdog;
  std::unique_ptr<http::handover_server> handover;
  // Opens the cache once a predecessor has released it (see attach_cache).
  std::thread attacher;
  // Held while serving; dropped at the end of the drain so each worker's loop
  // returns once nothing is left to run.
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  std::atomic<bool> ready{false};
  std::atomic<bool> draining{false};
  runtime() = default;
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;
  // The directory's thread reads the store (re-announcements) and is destroyed after
  // it: on every way out, a failed start included, it lets go of the store first.
  ~runtime() {
    if (directory) {
      directory->set_holdings(nullptr);
      directory->stop();
    }
  }
  std::atomic<bool> stopping{false};
  // The connection to the successor this process handed its listeners to; -1 if none.
  std::atomic<int> successor{-1};
};

// SIGTERM and SIGINT: blocked in every thread and taken by one thread of their own,
// so that none is lost to a handler that is gone (after a hand-over, Berth waits for
// the SIGTERM that ends its pod with nothing else left running).
class signal_watch {
 public:
  signal_watch() {
    sigset_t set = signals();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread exists: all inherit it
    thread_ = std::thread([this] { run(); });
  }
  ~signal_watch() {
    done_ = true;
    thread_.join();
  }
  signal_watch(const signal_watch&) = delete;
  signal_watch& operator=(const signal_watch&) = delete;

  // What a signal does from now on (on the signal thread); null: only remember it.
  // A signal that came before (during start-up) is handed to it at once.
  void on_signal(std::function<void(int)> f) {
    std::lock_guard lock(mu_);
    handler_ = std::move(f);
    if (handler_ && received_ != 0) handler_(received_);
  }
  // Whether a signal has come, waiting up to `limit` for one.
  bool wait_for(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (received_ == 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return received_ != 0;
  }

 private:
  static sigset_t signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    return set;
  }
  void run() {
    const sigset_t set = signals();
    while (!done_) {
      timespec step{0, 100'000'000};
      const int sig = sigtimedwait(&set, nullptr, &step);
      if (sig <= 0) continue;
      received_ = sig;
      received_.notify_all();
      std::lock_guard lock(mu_);
      if (handler_) handler_(sig);
    }
  }
  std::mutex mu_;
  std::function<void(int)> handler_;
  std::atomic<int> received_{0};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// How long the workers get, after the drain, to finish what was cut off (sessions
// closed, fills cancelled); past it they are stopped and the runtime is left to the
// kernel.
constexpr std::chrono::seconds k_teardown_limit{5};

// The end of the drain: every connection closed, every upstream connection closed
// (fills under way fail), nothing new accepted; the workers run dry.
void stop_everything(runtime& rt) {
  rt.admin->begin_shutdown();
  if (rt.watchdog) rt.watchdog->stop();  // the loops stop turning now, on purpose
  rt.pull->close_all();
  rt.admin->close_all();
  for (auto& c : rt.clients) c->shutdown();
  rt.guards.clear();
  rt.stopping = true;
  rt.stopping.notify_all();
}

void drain_then_stop(runtime& rt, const std::shared_ptr<asio::steady_timer>& timer,
                     std::chrono::steady_clock::time_point deadline) {
  if (rt.pull->open_connections() == 0 || std::chrono::steady_clock::now() >= deadline) {
    log::info("stopped", {{"open_connections", rt.pull->open_connections()}});
    stop_everything(rt);
    return;
  }
  timer->expires_after(std::chrono::milliseconds(50));
  timer->async_wait([&rt, timer, deadline](boost::system::error_code) { drain_then_stop(rt, timer, deadline); });
}

// The command line, for a Berth in standby to start itself again (execv).
std::vector<char*> g_argv;

// Whether anything answers HTTP on `address` (host:port): a refused connection is no.
bool something_serves(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), address.c_str() + colon + 1, &hints, &found) != 0) return false;
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const bool connected = ::connect(fd, found->ai_addr, found->ai_addrlen) == 0;
  const int err = errno;
  ::freeaddrinfo(found);
  if (connected) {
    static constexpr std::string_view probe = "GET /healthz HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n";
    (void)::send(fd, probe.data(), probe.size(), MSG_NOSIGNAL);
    char buf[64];
    (void)::recv(fd, buf, sizeof buf, 0);
  }
  ::close(fd);
  return connected || err != ECONNREFUSED;
}

// Pods whose Berth has handed its sockets over (BERTH_POD_UID, from the downward
// API), recorded beside the cache. A container of such a pod that the kubelet restarts
// must not take the sockets back from the successor: the pod is about to be deleted.
std::string retired_path(const config::settings& s) {
  return s.cache ? s.cache->dir + "/retired" : std::string();
}
std::string pod_uid() {
  const char* v = std::getenv("BERTH_POD_UID");
  return v ? std::string(v) : std::string();
}
bool is_retired(const config::settings& s) {
  const auto uid = pod_uid();
  if (uid.empty() || retired_path(s).empty()) return false;
  std::ifstream in(retired_path(s));
  for (std::string line; std::getline(in, line);) {
    if (line == uid) return true;
  }
  return false;
}
void set_retired(const config::settings& s, bool retired) {
  const auto uid = pod_uid();
  if (uid.empty() || retired_path(s).empty()) return;
  std::vector<std::string> kept;
  {
    std::ifstream in(retired_path(s));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line != uid) kept.push_back(line);
    }
  }
  if (retired) kept.push_back(uid);
  if (kept.size() > 16) kept.erase(kept.begin(), kept.end() - 16);  // old pods are long gone
  std::ofstream out(retired_path(s), std::ios::trunc);
  for (const auto& k : kept) out << k << "\n";
}

// After handing its sockets over, Berth waits for its SIGTERM. Should the successor
// die meanwhile (nothing answers on the admin address any more, twice), this Berth
// starts itself again and serves: it binds the sockets the dead successor released.
int standby(signal_watch& signals, const config::settings& s) {
  int refused = 0;
  const bool watch = !s.server.admin_listen.ends_with(":0");  // a port of its own: nothing to watch
  while (!signals.wait_for(std::chrono::seconds(1))) {
    if (!watch) continue;
    refused = something_serves(s.server.admin_listen) ? 0 : refused + 1;
    if (refused < 2) continue;
    log::warn("successor_gone", {{"detail", "nothing serves the node any more; starting again"}});
    set_retired(s, false);
    ::execv("/proc/self/exe", g_argv.data());
    log::error("restart_failed", {{"error", std::strerror(errno)}});
    return 1;
  }
  return 0;
}

// Whether a Berth serves the node, kept beside the cache as `alive`: "running" while
// one does (its mtime touched every second), "stopped" after a clean exit. Read at
// start-up: how the previous run ended (a "running" left behind is a crash, a SIGKILL,
// an OOM kill or a reboot) and how long the node went unserved since its last sign
// of life. Best effort: a cache directory it cannot write only loses the record.
class life_record {
 public:
  explicit life_record(std::string path) : path_(std::move(path)) {}
  ~life_record() { stop_touching(); }
  life_record(const life_record&) = delete;
  life_record& operator=(const life_record&) = delete;

  struct previous_run {
    std::string how = "first";  // first, clean, crash
    std::chrono::system_clock::time_point last_alive{};
  };
  previous_run previous() const {
    previous_run p;
    struct stat st {};
    if (path_.empty() || ::stat(path_.c_str(), &st) != 0) return p;
    std::ifstream in(path_);
    std::string word;
    in >> word;
    p.how = word == "stopped" ? "clean" : "crash";
    p.last_alive = std::chrono::system_clock::time_point(std::chrono::seconds(st.st_mtim.tv_sec) +
                                                         std::chrono::nanoseconds(st.st_mtim.tv_nsec));
    return p;
  }
  // Writes "running" and touches it every second until stop_touching().
  void start() {
    if (path_.empty() || !write("running\n")) return;
    touching_ = std::thread([this] {
      std::unique_lock lock(mu_);
      while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return done_; })) {
        ::utimensat(AT_FDCWD, path_.c_str(), nullptr, 0);
      }
    });
  }
  void stop_touching() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (touching_.joinable()) touching_.join();
  }
  // A clean end: the next run knows this one did not crash, and when it ended.
  void stopped() {
    stop_touching();
    if (!path_.empty()) write("stopped\n");
  }

 private:
  bool write(std::string_view text) const {
    std::ofstream out(path_, std::ios::trunc);
    out << text;
    return static_cast<bool>(out);
  }
  std::string path_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread touching_;
};

// Stops accepting and drains: on SIGTERM, or once a successor accepts on the
// listeners this process handed it. Runs on the first worker; once only.
void begin_drain(runtime& rt, std::string_view why) {
  if (rt.draining.exchange(true)) return;
  log::info("shutting_down", {{"reason", why}, {"open_connections", rt.pull->open_connections()}});
  rt.ready = false;
  rt.metrics.set_ready(false);
  rt.pull->begin_shutdown();
  // On SIGTERM the admin port stays up for the drain (/readyz says 503); after a
  // hand-over it is the successor's, and its probes must reach the successor only.
  if (rt.successor >= 0) rt.admin->begin_shutdown();
  const auto deadline = std::chrono::steady_clock::now() + rt.settings.server.shutdown_timeout;
  drain_then_stop(rt, std::make_shared<asio::steady_timer>(*rt.workers.front()), deadline);
}

// Where a running Berth offers its listeners to its successor: server.handover_socket,
// by default beside the cache (a hostPath both pods of a DaemonSet update share).
std::string handover_path(const config::settings& s) {
  if (s.server.handover_socket == "none") return {};
  if (!s.server.handover_socket.empty()) return s.server.handover_socket;
  return s.cache ? s.cache->dir + "/handover.sock" : std::string();
}

// Opens the blob cache and the metadata's local copy. Throws when the cache cannot
// be opened (its directory locked by another Berth, read-only, ...).
void open_cache(runtime& rt) {
  const auto& s = rt.settings;
  auto store = std::make_unique<store::blob_store>(*s.cache, store::posix_filesystem(), rt.metrics);
  if (rt.directory) store->subscribe(rt.directory);  // other nodes learn what this one holds
  // The index is read in the background: ready in milliseconds whatever the cache's
  // size (a kill -9 to serving again, issue #16); the usage is whole a moment later.
  store->open(store::blob_store::index_load::background);
  store->start_reconcile();  // off the start-up path, after the index read
  if (rt.directory) rt.directory->set_holdings([st = store.get()] { return st->digests(); });
  rt.store = std::move(store);
  rt.metrics.cache_up(true);
}

std::unique_ptr<meta::local_db> open_local_metadata(const config::settings& s) {
  const std::string dir = s.cache->dir + "/metadata";
  try {
    return meta::local_db::open(dir);
  } catch (const std::exception& e) {
    log::error("metadata_local_unavailable", {{"dir", dir}, {"error", e.what()}});
    return nullptr;
  }
}

// A successor serves uncached while its predecessor drains; this opens the cache as
// soon as the predecessor says it has closed it (or is gone), and hands it to every
// worker's mirror. Runs on rt.attacher.
void attach_cache(runtime& rt, http::inherited_listeners predecessor) {
  const auto started = std::chrono::steady_clock::now();
  bool released = false;
  std::string last_error;
  while (!rt.stopping) {
    released = released || predecessor.wait_released(std::chrono::milliseconds(250));
    if (!released && std::chrono::steady_clock::now() - started < rt.settings.server.shutdown_timeout) continue;
    try {
      open_cache(rt);
    } catch (const std::exception& e) {
      if (last_error != e.what()) log::warn("cache_waiting", {{"dir", rt.settings.cache->dir}, {"error", e.what()}});
      last_error = e.what();
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      continue;
    }
    rt.metadata->attach_local(open_local_metadata(rt.settings));
    for (std::size_t i = 0; i < rt.workers.size(); ++i) {
      asio::post(*rt.workers[i], [m = rt.mirrors[i].get(), st = rt.store.get()] { m->attach_store(st); });
    }
    if (rt.peer_endpoint) rt.peer_endpoint->attach_store(rt.store.get());
    log::info("cache_attached",
              {{"dir", rt.settings.cache->dir},
               {"after_ms", static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                       std::chrono::steady_clock::now() - started)
                                                       .count())}});
    return;
  }
}

int serve(const std::string& config_path) {
  signal_watch signals;  // first: every thread started after it blocks the signals
  auto rt = std::make_unique<runtime>();
  rt->settings = config::load_file(config_path);
  auto& s = rt->settings;
  log::set_level(s.log_level);

  for (const auto& opts : s.registries) {
    rt->metrics.registry_configured(opts.id());
    rt->registries.push_back(std::make_unique<upstream::registry>(opts, rt->tokens, rt->metrics));
    if (auto err = rt->registries.back()->load_credentials(); !err.empty()) {
      log::warn(
          "credentials_unavailable",
          {{"registry", opts.id()}, {"error", err}, {"detail", "pulling anonymously until the file is readable"}});
    }
  }
  std::vector<upstream::registry*> regs;
  for (auto& r : rt->registries) regs.push_back(r.get());
  if (s.metadata.redis) rt->backend = std::make_shared<meta::redis_client>(*s.metadata.redis, rt->metrics);
  if (s.peers.enabled()) {
    rt->metrics.peers_configured();
    peer::directory::options d;
    d.prefix = s.metadata.key_prefix;
    d.self = s.peers.address();
    rt->directory = std::make_shared<peer::directory>(rt->backend, d, rt->metrics);
  }
  // A Berth already serving on this node (the one this one replaces) hands over its
  // listeners, and its cache once it has drained.
  const auto handover = handover_path(s);
  if (is_retired(s) && something_serves(s.server.admin_listen)) {
    // This pod handed its sockets over and is being deleted; the kubelet restarted
    // this container meanwhile. Taking them back would leave the node unserved when
    // the pod goes.
    log::warn("retired",
              {{"pod_uid", pod_uid()}, {"detail", "this pod handed over to a newer Berth; waiting for SIGTERM"}});
    const auto settings = s;
    rt.reset();
    return standby(signals, settings);
  }
  http::inherited_listeners predecessor;
  if (!handover.empty()) {
    try {
      predecessor = http::take_over(handover);
    } catch (const std::exception& e) {
      log::warn("handover_failed", {{"socket", handover}, {"error", e.what()}});
    }
  }
  // A replacement takes at least one of the listeners. A Berth that shares the cache
  // directory but none of the addresses is no replacement: the runner keeps serving
  // (and keeps the cache; this one serves without it, as for any cache in use).
  if (predecessor.received() && !predecessor.offers("mirror", s.server.listen) &&
      !predecessor.offers("admin", s.server.admin_listen)) {
    log::warn("handover_declined",
              {{"socket", handover}, {"detail", "none of the running Berth's addresses is in this config"}});
    predecessor = http::inherited_listeners();
  }
  if (s.cache && predecessor.received()) {
    log::info("cache_deferred",
              {{"dir", s.cache->dir}, {"detail", "serving uncached until the Berth handing over releases the cache"}});
    rt->metrics.cache_up(false);
  } else if (s.cache) {
    // A cache that cannot be opened (a read-only or full filesystem, a directory
    // another Berth holds) does not stop the node's pulls: Berth serves without it.
    try {
      open_cache(*rt);
    } catch (const std::exception& e) {
      log::error(
          "cache_unavailable",
          {{"dir", s.cache->dir}, {"error", e.what()}, {"detail", "serving every blob from upstream, uncached"}});
      rt->store.reset();
      rt->metrics.cache_up(false);
    }
  }
  rt->table = std::make_unique<mirror::registry_table>(regs, s.default_registry);

  // Manifest metadata: always on; shared through Redis/Dragonfly when configured,
  // kept on disk next to the blobs when there is a cache dir.
  auto mopts = s.metadata;
  // Another node's upstream request may take connect + response time; its lock lasts that long.
  mopts.lock_timeout = s.upstream.connect_timeout + s.upstream.response_timeout + std::chrono::seconds(1);
  const auto& backend = rt->backend;
  std::unique_ptr<meta::local_db> local;
  const std::string local_dir = s.cache ? s.cache->dir + "/metadata" : std::string();
  if (rt->store) local = open_local_metadata(s);
  log::info("metadata", {{"mode", backend ? "shared" : "embedded"},
                         {"redis", mopts.redis_url},
                         {"local_dir", local ? local_dir : std::string()},
                         {"tag_ttl_ms", static_cast<long long>(mopts.tag_ttl.count())},
                         {"max_stale_ms", static_cast<long long>(mopts.max_stale.count())},
                         {"signed", !mopts.secret.empty()}});
  if (backend && mopts.secret.empty()) {
    log::warn("metadata_unsigned",
              {{"detail", "anyone who can write to the backend's " + mopts.key_prefix +
                              "* keys can change what every node serves; set metadata.secret_file"}});
  }
  rt->metadata = std::make_unique<meta::cache>(mopts, rt->metrics, backend, std::move(local));
  rt->metadata->start();

  const unsigned threads = s.server.threads ? s.server.threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<asio::io_context*> contexts;
  std::vector<mirror::mirror*> mirrors;
  // Mutual TLS between nodes: the peer listener's context and the one fetches use.
  if (s.peers.enabled() && s.peers.tls.enabled()) rt->peer_tls = peer::make_tls(s.peers.tls);
  for (unsigned i = 0; i < threads; ++i) {
    rt->workers.push_back(std::make_unique<asio::io_context>(1));
    contexts.push_back(rt->workers.back().get());
    rt->clients.push_back(
        std::make_unique<upstream::client>(rt->workers.back()->get_executor(), s.upstream, rt->metrics));
    if (rt->peer_tls.client) rt->clients.back()->set_direct_tls(rt->peer_tls.client.get(), s.peers.tls.server_name);
    mirror::mirror_options options;
    if (s.cache) {
      options.fill_stall = s.cache->reader_stall;
      options.authorization_ttl = s.cache->authorization_ttl;
    }
    options.min_rate = s.upstream.min_rate;
    options.min_rate_period = s.upstream.min_rate_period;
    rt->mirrors.push_back(std::make_unique<mirror::mirror>(*rt->table, *rt->clients.back(), rt->metrics,
                                                           rt->store.get(), rt->metadata.get(), options));
    mirrors.push_back(rt->mirrors.back().get());
  }

  for (std::size_t i = 0; i < mirrors.size(); ++i) mirrors[i]->set_fill_peer(*mirrors[(i + 1) % mirrors.size()]);
  if (rt->directory) {
    // Fills ask the cluster first: one upstream fetch per blob for all nodes.
    const auto follow = s.cache ? s.cache->reader_stall : std::chrono::milliseconds(60000);
    rt->cluster = std::make_unique<peer::cluster>(s.peers, *rt->directory, rt->metrics, follow);
    for (auto* m : mirrors) m->set_fill_sources(rt->cluster.get());
    rt->directory->start();
  }
  rt->pull = std::make_unique<http::server>(contexts, s.server, rt->metrics);
  rt->admin = std::make_unique<http::server>(std::vector<asio::io_context*>{contexts.front()}, s.server, rt->metrics);
  // A GET may carry a small body (the OCI conformance suite sends one); it is read
  // and ignored. Pushes are refused for their method.
  // A Berth still draining on these ports (it refused to hand them over) frees them
  // within its shutdown_timeout: wait for that rather than fail.
  const auto bind_wait = s.server.shutdown_timeout + std::chrono::seconds(5);
  // A peer connection is budgeted like a client's (three descriptors); over TLS one
  // more, the tunnel's socket pair.
  const auto fds = plan_descriptors(s.server, threads, s.registries.size(), s.upstream.max_idle_per_host,
                                    s.peers.enabled() ? std::max<std::size_t>(64, 4 * s.peers.max_uploads) : 0,
                                    s.peers.tls.enabled() ? 4 : 3);
  http::webhook_target webhook{rt->metadata.get(), rt->table.get(), s.metadata.webhook_secret_file};
  http::admin_state admin_state;
  admin_state.ready = &rt->ready;
  // Where the watchdog leaves its reason for the next run: beside the cache.
  const std::string exit_record = s.cache ? s.cache->dir + "/last-exit" : std::string();
  if (!exit_record.empty()) {
    if (const auto why = http::take_exit_record(exit_record); !why.empty()) {
      log::warn("previous_exit", {{"reason", why}});
      rt->metrics.watchdog_exit(why.substr(0, why.find(' ')));
    }
  }
  if (s.server.watchdog_timeout.count() > 0) {
    rt->watchdog = std::make_unique<http::watchdog>(
        contexts, s.server.watchdog_timeout, [exit_record](std::size_t loop, std::chrono::milliseconds late) {
          log::error("watchdog_exit", {{"loop", static_cast<unsigned>(loop)},
                                       {"late_ms", static_cast<long long>(late.count())},
                                       {"detail", "a worker's event loop is stuck; exiting so containerd falls back"}});
          if (!exit_record.empty()) http::record_exit(exit_record, "stuck_loop worker=" + std::to_string(loop));
          std::_Exit(70);
        });
    admin_state.live = [w = rt->watchdog.get()] { return w->live(); };
  }
  if (const char* hooks = std::getenv("BERTH_DEBUG_HOOKS"); hooks && std::string(hooks) == "1") {
    log::warn("debug_hooks_enabled", {{"detail", "POST /debug/block on the admin port can wedge a worker"}});
    admin_state.block_loop = [contexts](std::size_t loop, std::chrono::milliseconds ms) {
      if (loop >= contexts.size()) return false;
      asio::post(*contexts[loop], [ms] { std::this_thread::sleep_for(ms); });
      return true;
    };
  }
  const auto admin_port =
      rt->admin->listen(s.server.admin_listen, http::make_admin_handler(rt->metrics, admin_state, webhook),
                        {.name = "admin",
                         .access_log = false,
                         .max_body_bytes = http::admin_max_body_bytes,
                         .pull_only = false,
                         .gate = http::make_admin_gate(rt->metrics, webhook),
                         .max_connections = fds.admin,
                         .bind_wait = bind_wait},
                        predecessor.take("admin", s.server.admin_listen));
  // The mirror last: while the admin port waits for a draining predecessor to free
  // it, containerd is refused on the mirror (and falls back) instead of queueing.
  const auto port = rt->pull->listen(s.server.listen, http::make_pull_handler(mirrors),
                                     {.name = "mirror",
                                      .access_log = s.server.access_log,
                                      .max_body_bytes = 4096,
                                      .pull_only = true,
                                      .gate = nullptr,
                                      .max_connections = fds.mirror,
                                      .bind_wait = bind_wait},
                                     predecessor.take("mirror", s.server.listen));
  unsigned short peer_port = 0;
  if (s.peers.enabled()) {
    // Other nodes fetch blobs here; its own port, never the mirror's.
    const auto stall = s.cache ? s.cache->reader_stall : std::chrono::milliseconds(30000);
    rt->peer_endpoint = std::make_unique<peer::endpoint>(s.peers, rt->metrics, rt->store.get(), stall);
    peer_port = rt->pull->listen(s.peers.listen, rt->peer_endpoint->handler(),
                                 {.name = "peer",
                                  .access_log = s.server.access_log,
                                  .max_body_bytes = 4096,
                                  .pull_only = true,
                                  .gate = nullptr,
                                  .max_connections = fds.peer,
                                  .allow = s.peers.allow.empty() ? nullptr : peer::allow_from(s.peers.allow),
                                  .tls = rt->peer_tls.server.get(),
                                  .bind_wait = bind_wait},
                                 predecessor.take("peer", s.peers.listen));
  }
  // How the node was served before this run, now that this one listens.
  life_record life(s.cache ? s.cache->dir + "/alive" : std::string());
  predecessor.close_untaken();  // a listener this config no longer has: let it go now
  if (predecessor.received()) {
    rt->metrics.started("handover", 0);
    rt->metrics.handover("taken");
  } else {
    const auto before = life.previous();
    const double gap =
        before.how == "first"
            ? 0.0
            : std::max(0.0,
                       std::chrono::duration<double>(std::chrono::system_clock::now() - before.last_alive).count());
    rt->metrics.started(before.how, gap);
    if (before.how != "first") {
      log::info("previous_run", {{"ended", before.how}, {"unserved_ms", static_cast<long long>(gap * 1000)}});
    }
  }
  life.start();
  if (predecessor.received()) {
    predecessor.confirm();  // the predecessor stops accepting: its sockets are ours now
    if (s.cache)
      rt->attacher = std::thread([&rt = *rt, p = std::move(predecessor)]() mutable { attach_cache(rt, std::move(p)); });
  }
  if (!handover.empty()) {
    try {
      rt->handover = std::make_unique<http::handover_server>(
          handover,
          [&rt = *rt] {
            std::map<std::string, http::handover_server::listener> out;
            if (rt.draining) return out;
            for (auto [name, fd] : rt.pull->listening_copies())
              out[name] = {name == "peer" ? rt.settings.peers.listen : rt.settings.server.listen, fd};
            for (auto [name, fd] : rt.admin->listening_copies()) out[name] = {rt.settings.server.admin_listen, fd};
            return out;
          },
          [&rt = *rt](int channel) {
            set_retired(rt.settings, true);
            rt.metrics.handover("given");
            rt.successor = channel;
            asio::post(*rt.workers.front(), [&rt] { begin_drain(rt, "handed_over"); });
          },
          rt->metrics);
    } catch (const std::exception& e) {
      log::warn("handover_unavailable", {{"socket", handover}, {"error", e.what()}});
    }
  }
  rt->ready = true;
  rt->metrics.set_ready(true);
  log::info("listening", {{"listen", s.server.listen},
                          {"port", static_cast<unsigned>(port)},
                          {"admin_listen", s.server.admin_listen},
                          {"admin_port", static_cast<unsigned>(admin_port)},
                          {"peers_listen", s.peers.listen},
                          {"peer_port", static_cast<unsigned>(peer_port)},
                          {"threads", threads},
                          {"nofile", static_cast<unsigned long long>(fds.limit)},
                          {"descriptors_reserved", static_cast<unsigned long long>(fds.reserve)},
                          {"max_connections", static_cast<unsigned long long>(fds.mirror)},
                          {"admin_max_connections", static_cast<unsigned long long>(fds.admin)},
                          {"peer_max_connections", static_cast<unsigned long long>(fds.peer)},
                          {"registries", static_cast<unsigned>(regs.size())},
                          {"config", s.source}});

  signals.on_signal([&rt = *rt](int sig) {
    asio::post(*rt.workers.front(), [&rt, sig] { begin_drain(rt, sig == SIGINT ? "SIGINT" : "SIGTERM"); });
  });

  for (auto& w : rt->workers) rt->guards.push_back(asio::make_work_guard(*w));
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back([&w = *rt->workers[i], i] { run_worker(w, i); });
  if (rt->watchdog) rt->watchdog->start();
  // Once the drain is over, the workers have k_teardown_limit to run dry.
  std::promise<void> ran_dry;
  bool forced = false;
  std::thread reaper([&rt = *rt, done = ran_dry.get_future(), &forced]() mutable {
    rt.stopping.wait(false);
    if (done.wait_for(k_teardown_limit) == std::future_status::ready) return;
    forced = true;
    for (auto& w : rt.workers) w->stop();
  });
  run_worker(*rt->workers.front(), 0);
  for (auto& t : pool) t.join();
  if (!rt->stopping) {  // a worker's loop ended without a drain (it cannot, but never hang here)
    rt->stopping = true;
    rt->stopping.notify_all();
  }
  ran_dry.set_value();
  reaper.join();
  signals.on_signal(nullptr);  // from here a signal is only remembered
  if (rt->attacher.joinable()) rt->attacher.join();
  rt->handover.reset();  // its thread ends; a successor's socket file stays
  if (rt->watchdog) rt->watchdog->stop();
  if (rt->store) {
    rt->store->join_background();
    rt->store->flush();  // publishes handed to the disk thread before the stop complete
  }
  if (forced) {
    // Something still ran past the limit (its coroutine frames point into the
    // runtime): leave it all to the kernel rather than free it under them.
    log::warn("shutdown_forced", {{"limit_s", static_cast<long long>(k_teardown_limit.count())},
                                  {"detail", "work was still running; exiting without tearing down"}});
    (void)rt.release();
    return 0;
  }
  // Nothing is left on any loop: tear everything down, in reverse order of building.
  const int successor = rt->successor.exchange(-1);
  const auto settings = rt->settings;
  rt.reset();
  // After a hand-over the record is the successor's; otherwise this is a clean end.
  if (successor >= 0) {
    life.stop_touching();
  } else {
    life.stopped();
  }
  log::info("shutdown_complete");
  if (successor >= 0) {
    // The cache is closed: the successor may open it. In a DaemonSet update this pod
    // is deleted once the new one is ready; exiting before that would make the kubelet
    // restart it, and the restarted Berth would take the listeners back.
    http::send_released(successor);
    log::info("handed_over_waiting", {{"detail", "the successor serves; waiting for SIGTERM to exit"}});
    return standby(signals, settings);
  }
  return 0;
}

int check_config(const std::string& path) {
  const auto s = config::load_file(path);
  metrics::registry metrics;
  upstream::token_cache tokens;
  int rc = 0;
  std::string notes;
  for (std::size_t i = 0; i < s.registries.size(); ++i) {
    const auto& opts = s.registries[i];
    upstream::registry reg(opts, tokens, metrics);  // throws on an unusable endpoint or ca_file
    if (opts.credentials.empty()) {
      notes += "# registries[" + std::to_string(i) + "]: no credentials, pulls upstream anonymously\n";
      continue;
    }
    const std::string file = opts.credentials.docker_config_file.empty() ? opts.credentials.password_file
                                                                         : opts.credentials.docker_config_file;
    const std::string key = opts.credentials.docker_config_file.empty() ? "username_file/password_file" : "credentials";
    if (auto err = reg.load_credentials(); !err.empty()) {
      if (::access(file.c_str(), F_OK) != 0) {
        std::cerr << path << ": warning: registries[" << i << "]." << key << ": " << err
                  << " (Berth pulls anonymously until it appears)\n";
      } else {
        std::cerr << path << ": registries[" << i << "]." << key << ": " << err << "\n";
        rc = 1;
      }
    } else {
      notes += "# registries[" + std::to_string(i) + "]: credentials loaded (password redacted)\n";
    }
  }
  std::cout << "# effective configuration of " << path << " (environment overrides applied)\n"
            << config::render(s) << notes;
  return rc;
}

struct containerd_args {
  std::vector<std::string> registries;
  std::string mirror;
  std::string certs_dir = "/etc/containerd/certs.d";
  std::string server;
  std::string ca;
  std::string dial_timeout = "1s";
  std::string config;
  bool fallback_credentials = false;
};

// With --config, each registry name's fallback is that registry's endpoint and CA,
// and with --fallback-credentials the robot's Basic credentials for it.
struct fallback {
  std::string server;
  std::string ca;
  std::string authorization;
};

// "Basic <base64 user:password>" for the robot of `r`; throws when it has none.
std::string robot_authorization(const upstream::registry_options& r) {
  if (r.credentials.empty()) {
    throw std::runtime_error("--fallback-credentials: registry " + r.id() + " has no credentials in the config");
  }
  upstream::credentials_provider robot(r.credentials);
  if (const auto err = robot.load_now(); !err.empty()) {
    throw std::runtime_error("--fallback-credentials: registry " + r.id() + ": " + err);
  }
  const auto c = robot.get();
  if (!c) throw std::runtime_error("--fallback-credentials: registry " + r.id() + ": no credentials");
  return "Basic " + core::base64_encode(c->username + ":" + c->password);
}

// Registries and mirror URL from the flags, or from a Berth config file; for each
// registry from the config, its endpoint and ca_file as containerd's fallback.
std::map<std::string, fallback> resolve_containerd_args(containerd_args& a) {
  std::map<std::string, fallback> fallbacks;
  if (!a.config.empty()) {
    const auto s = config::load_file(a.config);
    for (const auto& r : s.registries) {
      const std::string authorization = a.fallback_credentials ? robot_authorization(r) : std::string();
      for (const auto& n : r.names) fallbacks[n] = {r.endpoint, r.ca_file, authorization};
    }
    if (a.registries.empty()) {
      for (const auto& r : s.registries) a.registries.insert(a.registries.end(), r.names.begin(), r.names.end());
    }
    if (a.mirror.empty()) {
      std::string listen = s.server.listen;
      // containerd on the node reaches a wildcard listener on loopback.
      if (listen.rfind("0.0.0.0:", 0) == 0) listen = "127.0.0.1:" + listen.substr(8);
      if (listen.rfind("[::]:", 0) == 0) listen = "[::1]:" + listen.substr(5);
      a.mirror = "http://" + listen;
    }
  }
  if (a.fallback_credentials && a.config.empty()) {
    throw std::runtime_error("--fallback-credentials takes the robot from the Berth config: give --config");
  }
  if (a.registries.empty()) throw std::runtime_error("name at least one --registry (or give --config)");
  if (a.mirror.empty()) throw std::runtime_error("give --mirror (or --config)");
  return fallbacks;
}

int containerd_command(const std::string& verb, containerd_args a) {
  const auto fallbacks = resolve_containerd_args(a);
  for (const auto& registry : a.registries) {
    containerd::hosts_options o{registry, a.mirror, a.server, a.dial_timeout, a.ca, ""};
    if (auto it = fallbacks.find(registry); it != fallbacks.end()) {
      if (o.server.empty()) o.server = it->second.server;
      if (o.ca.empty()) o.ca = it->second.ca;
      o.fallback_authorization = it->second.authorization;
    }
    if (a.fallback_credentials && o.fallback_authorization.empty()) {
      throw std::runtime_error("--fallback-credentials: " + registry + " is not a name of a registry in the config");
    }
    if (verb == "print") {
      std::optional<std::string> existing;
      const auto path = containerd::hosts_file(a.certs_dir, registry);
      if (std::ifstream in{path, std::ios::binary}) {
        existing = std::string(std::istreambuf_iterator<char>(in), {});
      }
      if (!o.fallback_authorization.empty()) o.fallback_authorization = "Basic <the robot's credentials>";
      std::cout << "# " << path << "\n" << containerd::render(o, existing);
    } else if (verb == "install") {
      const auto r = containerd::install(a.certs_dir, o);
      std::cout << r.action << " " << r.path << "\n";
    } else {
      const auto r = containerd::uninstall(a.certs_dir, registry, a.mirror);
      std::cout << r.action << " " << r.path << "\n";
    }
  }
  return 0;
}

std::string iso_time(std::int64_t unix_seconds) {
  const auto t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string human_bytes(std::uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

// `berth cache ...`: stats and ls read the index (also while Berth runs); verify and
// gc need the cache to themselves (RocksDB allows one writer).
int cache_command(const std::string& verb, const std::string& config_path) {
  const auto s = config::load_file(config_path);
  log::set_level(log::level::warn);  // the command's own output goes to stdout
  if (!s.cache) throw std::runtime_error(config_path + ": cache: is not configured");
  const auto& dir = s.cache->dir;
  if (verb == "stats" || verb == "ls") {
    auto idx = store::index::open(dir + "/index", true);
    std::vector<std::pair<std::string, store::blob_entry>> all;
    if (!idx->for_each([&](const std::string& d, const store::blob_entry& e) { all.emplace_back(d, e); })) {
      throw std::runtime_error("cache index " + dir + "/index: read error (the log line above says which)");
    }
    if (verb == "ls") {
      std::sort(all.begin(), all.end(),
                [](const auto& a, const auto& b) { return a.second.last_access > b.second.last_access; });
      for (const auto& [d, e] : all) {
        std::cout << d << "  " << e.size << "  " << iso_time(e.last_access) << "  " << e.media_type << "\n";
      }
      return 0;
    }
    std::uint64_t bytes = 0;
    std::int64_t oldest = 0, newest = 0;
    for (const auto& [d, e] : all) {
      bytes += e.size;
      if (oldest == 0 || e.last_access < oldest) oldest = e.last_access;
      newest = std::max(newest, e.last_access);
    }
    const std::uint64_t limit = s.cache->limit_for(store::posix_filesystem()->capacity(dir));
    std::cout << "dir: " << dir << "\nblobs: " << all.size() << "\nbytes: " << bytes << " (" << human_bytes(bytes)
              << ")\nlimit: " << limit << " (" << human_bytes(limit) << ")\n";
    if (!all.empty()) {
      std::cout << "least recently used: " << iso_time(oldest) << "\nmost recently used: " << iso_time(newest) << "\n";
    }
    return 0;
  }
  metrics::registry metrics;
  store::blob_store st(*s.cache, store::posix_filesystem(), metrics);
  try {
    st.open();
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) + " (is a Berth running on this cache? stop it first)");
  }
  if (verb == "verify") {
    const auto r = st.verify([](const std::string& digest, const std::string& problem) {
      std::cout << "removed " << digest << ": " << problem << "\n";
    });
    std::cout << "checked " << r.checked << " blobs (" << human_bytes(r.bytes) << "), " << r.bad << " bad\n";
    if (!r.complete) std::cout << "the index could not be read to its end: not every blob was checked\n";
    return r.bad == 0 && r.complete ? 0 : 1;
  }
  const auto u = st.current_usage();
  const auto target = static_cast<std::uint64_t>(static_cast<double>(u.limit) * s.cache->low_watermark);
  const auto freed = u.limit > 0 && u.bytes > target ? st.evict_to(target) : 0;
  std::cout << "freed " << freed << " bytes (" << human_bytes(freed) << "); " << st.current_usage().bytes
            << " bytes in " << st.current_usage().blobs << " blobs remain (target " << target << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  g_argv.assign(argv, argv + argc);
  g_argv.push_back(nullptr);
  CLI::App app{"Berth: a node-local pull-through registry proxy for containerd"};
  app.set_version_flag("--version", std::string("berth ") + BERTH_VERSION);
  app.require_subcommand(1);

  std::string config_path;
  auto* serve_cmd = app.add_subcommand("serve", "Run the mirror");
  serve_cmd->add_option("-c,--config", config_path, "Config file (YAML)")->envname("BERTH_CONFIG")->required();

  std::string check_path;
  auto* check_cmd =
      app.add_subcommand("check-config", "Validate a config file and print the effective config, secrets redacted");
  check_cmd->add_option("file", check_path, "Config file (YAML)")->required();

  auto* version_cmd = app.add_subcommand("version", "Print the version");

  std::string cache_config;
  auto* cache_cmd = app.add_subcommand("cache", "Inspect and maintain the blob cache");
  cache_cmd->require_subcommand(1);
  for (auto [name, help] : {std::pair{"stats", "Blob count, bytes, limit (works while Berth runs)"},
                            std::pair{"ls", "List cached blobs, most recently used first (works while Berth runs)"},
                            std::pair{"verify", "Rehash every blob; remove bad ones (Berth stopped)"},
                            std::pair{"gc", "Evict to the low watermark now (Berth stopped)"}}) {
    cache_cmd->add_subcommand(name, help)
        ->add_option("-c,--config", cache_config, "Berth config file")
        ->envname("BERTH_CONFIG")
        ->required();
  }

  containerd_args ctd;
  auto* ctd_cmd = app.add_subcommand("containerd", "Point containerd at Berth through certs.d/<registry>/hosts.toml");
  ctd_cmd->require_subcommand(1);
  for (auto [name, help] :
       {std::pair{"install", "Write Berth's host entry (keeps the file's other hosts, backs it up)"},
        std::pair{"uninstall", "Restore the original hosts.toml (or remove Berth's)"},
        std::pair{"print", "Show the hosts.toml install would write, without writing"}}) {
    auto* sub = ctd_cmd->add_subcommand(name, help);
    sub->add_option("--registry", ctd.registries, "Registry host containerd pulls from (repeatable)");
    sub->add_option("--mirror", ctd.mirror, "Berth's URL, e.g. http://127.0.0.1:5050");
    sub->add_option("--certs-dir", ctd.certs_dir, "containerd's config_path")->capture_default_str();
    sub->add_option("--config", ctd.config, "Take registries and mirror from this Berth config");
    if (std::string(name) != "uninstall") {
      sub->add_option("--server", ctd.server,
                      "Fallback server for a new file (default: the registry's endpoint with --config, else "
                      "https://<registry>; https://registry-1.docker.io for docker.io)");
      sub->add_option("--ca", ctd.ca,
                      "CA file for the fallback server in a new file (default: the registry's ca_file with --config)");
      sub->add_option("--dial-timeout", ctd.dial_timeout, "containerd 2.1+ dial timeout for Berth; '' to omit")
          ->capture_default_str();
      sub->add_flag("--fallback-credentials", ctd.fallback_credentials,
                    "Give containerd the robot's Basic credentials for the fallback server (Harbor accepts them "
                    "on /v2/), so pods without pull secrets still pull while Berth is down; needs --config. The "
                    "file is then written 0600");
    }
  }

  CLI11_PARSE(app, argc, argv);

  try {
    if (*version_cmd) {
      std::cout << "berth " << BERTH_VERSION << "\n";
      return 0;
    }
    if (*check_cmd) return check_config(check_path);
    if (*cache_cmd) {
      for (const char* verb : {"stats", "ls", "verify", "gc"}) {
        if (*cache_cmd->get_subcommand(verb)) return cache_command(verb, cache_config);
      }
    }
    if (*ctd_cmd) {
      for (const char* verb : {"install", "uninstall", "print"}) {
        if (*ctd_cmd->get_subcommand(verb)) return containerd_command(verb, ctd);
      }
    }
    if (*serve_cmd) return serve(config_path);
  } catch (const config::config_error& e) {
    std::cerr << "berth: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "berth: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
