#include "http/server.hpp"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <unistd.h>
#include <array>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <deque>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_set>

#include "core/log.hpp"
#include "core/spawn.hpp"
#include "http/tls_front.hpp"
#include "metrics/metrics.hpp"

namespace berth::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;
using accepted_socket = asio::basic_stream_socket<tcp, asio::io_context::executor_type>;

std::string error_body(const core::oci_error& e) {
  boost::json::object entry;
  entry["code"] = e.code;
  entry["message"] = e.message;
  boost::json::array errors;
  errors.push_back(std::move(entry));
  boost::json::object root;
  root["errors"] = std::move(errors);
  return boost::json::serialize(root);
}

namespace {

tcp::endpoint parse_listen(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("listen address needs host:port: " + address);
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) throw std::runtime_error("listen address is not an IP address: " + address);
  unsigned long p = 0;
  try {
    std::size_t used = 0;
    p = std::stoul(port, &used);
    if (used != port.size() || p > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw std::runtime_error("listen address has a bad port: " + address);
  }
  return {ip, static_cast<unsigned short>(p)};
}

struct listener;

struct connection_state {
  connection_state(tcp::socket s, listener& l) : stream(std::move(s)), owner(l) {}
  beast::tcp_stream stream;
  listener& owner;
  // Waiting for a request, and since when: read by the accept loop (another thread)
  // to pick the longest idle connection to close when the listener is full.
  std::atomic<bool> idle{true};
  std::atomic<clock_type::rep> idle_since{clock_type::now().time_since_epoch().count()};
  // Picked to be closed for room: closed at once if idle, else after its current
  // reply (never kept alive), so the listener's limit holds.
  std::atomic<bool> shed{false};
  // Whether a request has been read on it yet. On this connection's thread only.
  bool used = false;
  // A TLS listener's connection: the tunnel whose cleartext `stream` carries. When the
  // connection closes, the tunnel sends what is left and closes, within
  // `tunnel_drain` (the write timeout): a tunnel never outlives its session by more.
  std::shared_ptr<tls_tunnel> tunnel;
  std::chrono::milliseconds tunnel_drain{0};
  void set_idle(bool v) {
    if (v) idle_since.store(clock_type::now().time_since_epoch().count(), std::memory_order_relaxed);
    idle.store(v, std::memory_order_release);
  }
};

struct listener {
  tcp::acceptor acceptor;
  handler handle;
  listener_options options;
  std::size_t open = 0;  // guarded by server::impl::mu
  std::atomic<clock_type::rep> refused_logged{0};
  // A copy of the listening socket kept to hand to a successor; -1 once shutdown
  // began. Guarded by server::impl::mu.
  int handover_fd = -1;
  // A TLS listener's handshakes under way, oldest first (guarded by server::impl::mu):
  // at k_max_handshakes the oldest gives way, and shutdown closes them.
  std::deque<std::weak_ptr<tls_tunnel>> handshakes;
  explicit listener(asio::io_context& ctx) : acceptor(ctx) {}
  ~listener() {
    if (handover_fd >= 0) ::close(handover_fd);
  }
  listener(const listener&) = delete;
  listener& operator=(const listener&) = delete;
};

// On shutdown, how long a connection accepted just before it has to send its first
// request.
constexpr std::chrono::seconds k_first_request_grace{1};
// How long a TLS client has to finish its handshake.
constexpr std::chrono::seconds k_tls_handshake{3};
// TLS handshakes under way on one listener at most. They are unauthenticated: at the
// cap the oldest is closed for the newest, so connecting and saying nothing cannot
// keep the cluster's nodes out (a real peer's handshake takes milliseconds).
constexpr std::size_t k_max_handshakes = 32;

// What a full listener answers (then closes).
const std::string& busy_answer() {
  static const std::string busy = [] {
    const auto body = error_body(core::error(core::failure::overloaded, "too many open connections; retry"));
    return "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           "Connection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  }();
  return busy;
}

// `now`: a TLS connection's tunnel is closed at once too (a forced stop), instead of
// sending what the session wrote first.
// Whether a refusal on `l` may be logged now: one line a second at most, so that a
// flood (or a scan of the port) does not turn into a flood of log lines.
bool refusal_log_due(listener& l) {
  const auto now = clock_type::now().time_since_epoch().count();
  auto last = l.refused_logged.load();
  return now - last > std::chrono::duration_cast<clock_type::duration>(std::chrono::seconds(1)).count() &&
         l.refused_logged.compare_exchange_strong(last, now);
}

void close_socket(connection_state& c, bool now = false) {
  error_code ignored;
  c.stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  c.stream.socket().close(ignored);
  if (c.tunnel) close_tls_tunnel(c.tunnel, now ? std::chrono::milliseconds(0) : c.tunnel_drain);
}

// One in-flight request, counted down however the request ends.
class in_flight {
 public:
  explicit in_flight(metrics::registry& m) : m_(m) { m_.http_in_flight(1); }
  ~in_flight() { m_.http_in_flight(-1); }
  in_flight(const in_flight&) = delete;
  in_flight& operator=(const in_flight&) = delete;

 private:
  metrics::registry& m_;
};

}  // namespace

struct server::impl : std::enable_shared_from_this<server::impl> {
  std::vector<asio::io_context*> workers;
  server_options options;
  metrics::registry& metrics;
  std::atomic<bool> stopping{false};
  std::atomic<std::size_t> next_worker{0};
  std::vector<std::unique_ptr<listener>> listeners;

  mutable std::mutex mu;  // guards connections
  std::unordered_set<std::shared_ptr<connection_state>> connections;

  impl(std::vector<asio::io_context*> w, server_options o, metrics::registry& m)
      : workers(std::move(w)), options(std::move(o)), metrics(m) {}

  asio::awaitable<void> accept_loop(listener& l);
  // What a spawned coroutine's escaped exception becomes: a log line and a count.
  auto on_exception(std::string_view task) {
    return [this, task](std::string_view what) {
      log::error("task_exception", {{"task", task}, {"error", what}});
      metrics.task_exception(task);
    };
  }
  // Whether a new connection may stay: at the listener's limit the longest idle
  // connection is closed to make room, or, with none idle, this one is refused.
  bool admit(listener& l, accepted_socket& sock);
  // Whether the listener has room for one more connection: at its limit the longest
  // idle one is closed to make room; false (counted, logged) when every one is busy.
  bool make_room(listener& l);
  // A connection to a TLS listener: its tunnel, listed among the handshakes under way.
  void start_tls(listener& l, accepted_socket& sock, std::size_t worker);
  // Whether the connection comes from an address the listener allows; if not, it is
  // closed (nothing is read or written) and counted.
  bool allowed(listener& l, accepted_socket& sock);
  // One request on a connection: read, answer, log. False: close the connection.
  asio::awaitable<bool> serve_one(connection_state& conn, listener& l, std::size_t worker, beast::flat_buffer& buffer);
  asio::awaitable<void> session(std::shared_ptr<connection_state> conn, listener& l, std::size_t worker);
  // A connection to a TLS listener: the handshake, then (with room) an ordinary
  // session on the cleartext side, counted in l.open from then on.
  asio::awaitable<void> serve_tls(std::shared_ptr<tls_tunnel> t, listener& l, std::size_t worker);
  asio::awaitable<bool> write_reply(connection_state& conn, core::reply& r, bool head, unsigned version,
                                    bool keep_alive, std::uint64_t& bytes);
  asio::awaitable<bool> send_file(connection_state& conn, const core::file_span& span, std::uint64_t& bytes);
  // After answering a request whose body (or rest) was not read: close the sending
  // side, then read and drop what the client still sends, for a short while. Closing
  // with unread bytes would reset the connection, and the client would lose the
  // answer it has not read yet (nginx's lingering_close).
  asio::awaitable<void> linger(connection_state& conn);
};

server::server(std::vector<asio::io_context*> workers, server_options options, metrics::registry& metrics)
    : impl_(std::make_shared<impl>(std::move(workers), std::move(options), metrics)) {
  // Each worker's event loop creates its epoll instance on first use. Do that now:
  // the first connection handed to an idle worker may come when descriptors have
  // run out, and a failure there cannot be answered.
  for (auto* w : impl_->workers) {
    tcp::socket warm(*w);
    warm.open(tcp::v4());
  }
}

server::~server() = default;

unsigned short server::listen(const std::string& address, handler h, listener_options options, int inherited_fd) {
  auto l = std::make_unique<listener>(*impl_->workers.front());
  l->handle = std::move(h);
  l->options = std::move(options);
  const auto ep = parse_listen(address);
  error_code ec;
  if (inherited_fd >= 0) {
    // The same socket, its accept queue included: nothing waiting in it is lost.
    l->acceptor.assign(ep.protocol(), inherited_fd, ec);
    if (ec) {
      ::close(inherited_fd);
      throw std::runtime_error("cannot accept on the socket handed over for " + address + ": " + ec.message());
    }
  } else {
    l->acceptor.open(ep.protocol());
    l->acceptor.set_option(tcp::acceptor::reuse_address(true));
    const auto give_up = std::chrono::steady_clock::now() + l->options.bind_wait;
    bool logged = false;
    for (;;) {
      l->acceptor.bind(ep, ec);
      if (ec != asio::error::address_in_use || std::chrono::steady_clock::now() >= give_up) break;
      if (!logged) {
        log::warn("waiting_for_address", {{"listener", l->options.name},
                                          {"address", address},
                                          {"limit_ms", static_cast<long long>(l->options.bind_wait.count())}});
        logged = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (ec) throw std::runtime_error("cannot listen on " + address + ": " + ec.message());
    l->acceptor.listen(asio::socket_base::max_listen_connections);
  }
  const auto port = l->acceptor.local_endpoint().port();
  auto& ref = *l;
  {
    std::lock_guard lock(impl_->mu);
    l->handover_fd = ::fcntl(l->acceptor.native_handle(), F_DUPFD_CLOEXEC, 0);
    impl_->listeners.push_back(std::move(l));
  }
  core::spawn(*impl_->workers.front(), impl_->accept_loop(ref), impl_->on_exception("accept"));
  return port;
}

std::map<std::string, int> server::listening_copies() const {
  std::lock_guard lock(impl_->mu);
  std::map<std::string, int> out;
  if (impl_->stopping) return out;
  for (const auto& l : impl_->listeners) {
    if (l->handover_fd < 0) continue;
    const int fd = ::fcntl(l->handover_fd, F_DUPFD_CLOEXEC, 0);
    if (fd >= 0) out[l->options.name] = fd;
  }
  return out;
}

void server::begin_shutdown() {
  {
    // The copies kept for a successor go first: a listening socket nobody accepts
    // on must close now, so that clients are refused at once and fall back.
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    for (auto& l : impl_->listeners) {
      if (l->handover_fd >= 0) ::close(l->handover_fd);
      l->handover_fd = -1;
    }
  }
  for (auto& l : impl_->listeners) {
    asio::post(l->acceptor.get_executor(), [&a = l->acceptor] {
      error_code ignored;
      a.close(ignored);
    });
  }
  std::lock_guard lock(impl_->mu);
  for (auto& l : impl_->listeners) {
    for (const auto& w : l->handshakes) close_tls_tunnel(w.lock());  // no session to answer yet
  }
  for (const auto& c : impl_->connections) {
    asio::post(c->stream.get_executor(), [c] {
      if (!c->idle) return;  // busy: closed after its reply (see serve_one)
      if (c->used) {
        // Idle between requests: closed now. A client whose next request meets the
        // close retries it on a new connection (HTTP/1.1 §9.3.1; Go's transport does).
        close_socket(*c);
        return;
      }
      // Accepted, its first request not read yet: a client that just connected has
      // nothing to retry, so its request gets a moment to arrive and is answered.
      auto t = std::make_shared<asio::steady_timer>(c->stream.get_executor(), k_first_request_grace);
      t->async_wait([c, t](error_code) {
        if (c->idle) close_socket(*c);
      });
    });
  }
}

void server::close_all() {
  std::lock_guard lock(impl_->mu);
  for (auto& l : impl_->listeners) {
    for (const auto& w : l->handshakes) close_tls_tunnel(w.lock());
  }
  for (const auto& c : impl_->connections) {
    asio::post(c->stream.get_executor(), [c] { close_socket(*c, true); });
  }
}

std::size_t server::open_connections() const {
  std::lock_guard lock(impl_->mu);
  return impl_->connections.size();
}

bool server::impl::allowed(listener& l, accepted_socket& sock) {
  error_code ec;
  const auto from = sock.remote_endpoint(ec);
  if (!ec && l.options.allow(from.address())) return true;
  metrics.connection_shed(l.options.name, "not_allowed");
  if (refusal_log_due(l)) {
    log::warn("connection_not_allowed", {{"listener", l.options.name},
                                         {"from", ec ? ec.message() : from.address().to_string()},
                                         {"detail", "not from an allowed address (peers.allow)"}});
  }
  sock.close(ec);
  return false;
}

bool server::impl::admit(listener& l, accepted_socket& sock) {
  if (make_room(l)) return true;
  error_code ec;
  sock.non_blocking(true, ec);
  sock.write_some(asio::buffer(busy_answer().data(), busy_answer().size()), ec);
  sock.shutdown(tcp::socket::shutdown_send, ec);
  sock.close(ec);
  return false;
}

bool server::impl::make_room(listener& l) {
  const auto max = l.options.max_connections;
  std::shared_ptr<connection_state> oldest;
  {
    std::lock_guard lock(mu);
    if (max == 0 || l.open < max) return true;
    for (const auto& c : connections) {
      if (&c->owner != &l || c->shed.load() || !c->idle.load(std::memory_order_acquire)) continue;
      if (!oldest || c->idle_since.load(std::memory_order_relaxed) < oldest->idle_since.load(std::memory_order_relaxed))
        oldest = c;
    }
    if (oldest) oldest->shed = true;  // not picked again while its close is on the way
  }
  if (oldest) {
    // Make room: the longest idle keep-alive connection goes (a client reconnects).
    asio::post(oldest->stream.get_executor(), [oldest] {
      if (oldest->idle) close_socket(*oldest);
    });
    metrics.connection_shed(l.options.name, "closed_idle");
    return true;
  }
  // Every connection is busy: refuse this one readably and at once.
  metrics.connection_shed(l.options.name, "refused");
  if (refusal_log_due(l)) {
    log::warn("connection_refused", {{"listener", l.options.name},
                                     {"max_connections", static_cast<unsigned long long>(max)},
                                     {"detail", "every connection is busy; raise clients.max_connections"}});
  }
  return false;
}

asio::awaitable<void> server::impl::accept_loop(listener& l) {
  auto self = shared_from_this();
  while (!stopping) {
    const auto index = next_worker.fetch_add(1) % workers.size();
    error_code ec;
    try {
      auto sock = co_await l.acceptor.async_accept(*workers[index], asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) {
        if (l.options.allow && !allowed(l, sock)) continue;
        sock.set_option(tcp::no_delay(true), ec);
        if (l.options.tls != nullptr) {
          start_tls(l, sock, index);  // admitted once the handshake is done
          continue;
        }
        if (!admit(l, sock)) continue;
        auto conn = std::make_shared<connection_state>(std::move(sock), l);
        {
          std::lock_guard lock(mu);
          connections.insert(conn);
          ++l.open;
        }
        try {
          core::spawn(*workers[index], session(conn, l, index), on_exception("session"));
        } catch (...) {
          std::lock_guard lock(mu);
          if (connections.erase(conn) > 0) --l.open;
          throw;
        }
        continue;
      }
    } catch (const std::exception& e) {
      // Nothing may escape into the event loop (it would end the process).
      log::error("accept_exception", {{"listener", l.options.name}, {"error", e.what()}});
      ec = asio::error::no_descriptors;
    }
    if (ec == asio::error::operation_aborted || !l.acceptor.is_open()) co_return;
    log::warn("accept_failed", {{"listener", l.options.name}, {"error", ec.message()}});
    // Out of file descriptors and the like: back off instead of spinning.
    asio::steady_timer t(l.acceptor.get_executor(), std::chrono::milliseconds(50));
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<bool> server::impl::write_reply(connection_state& conn, core::reply& r, bool head, unsigned version,
                                                bool keep_alive, std::uint64_t& bytes) {
  error_code ec;
  if (r.error) {
    r.body = error_body(*r.error);
    r.headers.set("Content-Type", "application/json");
    r.stream.reset();
  }
  auto fill = [&](auto& res) {
    res.result(r.status);
    res.version(version);
    for (const auto& f : r.headers.fields()) res.insert(f.first, f.second);
    res.set("Docker-Distribution-API-Version", "registry/2.0");
    res.keep_alive(keep_alive);
  };

  if (head) {
    bhttp::response<bhttp::empty_body> res;
    fill(res);
    std::uint64_t length = r.body.size();
    if (r.head_length) {
      length = *r.head_length;
    } else if (r.stream && r.stream->size()) {
      length = *r.stream->size();
    }
    res.content_length(length);
    bhttp::response_serializer<bhttp::empty_body> sr{res};
    conn.stream.expires_after(options.write_timeout);
    co_await bhttp::async_write_header(conn.stream, sr, asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  }

  if (!r.stream) {
    bhttp::response<bhttp::string_body> res;
    fill(res);
    res.body() = std::move(r.body);
    res.prepare_payload();
    conn.stream.expires_after(options.write_timeout);
    co_await bhttp::async_write(conn.stream, res, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) bytes = res.body().size();
    co_return !ec;
  }

  // A streamed body goes through one fixed buffer: memory stays flat for any size.
  bhttp::response<bhttp::buffer_body> res;
  fill(res);
  if (auto n = r.stream->size()) {
    res.content_length(*n);
  } else {
    res.chunked(true);
  }
  res.body().data = nullptr;
  res.body().more = true;
  bhttp::response_serializer<bhttp::buffer_body> sr{res};
  conn.stream.expires_after(options.write_timeout);
  co_await bhttp::async_write_header(conn.stream, sr, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return false;
  if (options.zero_copy) {
    if (const auto span = r.stream->file()) {
      const bool ok = co_await send_file(conn, *span, bytes);
      r.stream->sent(bytes);
      co_return ok;
    }
  }
  std::unique_ptr<char[]> buf(new char[options.stream_buffer_bytes]);
  while (true) {
    error_code src_ec;
    const auto n = co_await r.stream->read(asio::buffer(buf.get(), options.stream_buffer_bytes), src_ec);
    if (src_ec) {
      // The body is broken: cut the connection so the client sees a short body
      // and retries, rather than a complete-looking wrong one.
      log::warn("stream_aborted", {{"error", src_ec.message()}, {"sent", bytes}});
      co_return false;
    }
    if (n == 0) {
      res.body().data = nullptr;
      res.body().more = false;
    } else {
      res.body().data = buf.get();
      res.body().size = n;
      res.body().more = true;
    }
    conn.stream.expires_after(options.write_timeout);
    co_await bhttp::async_write(conn.stream, sr, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) co_return false;
    bytes += n;
    if (n == 0) break;
  }
  co_return true;
}

// Sends a file span with sendfile(2): the kernel moves page-cache pages to the socket,
// no copy through user space. Waits for writability with a deadline per wait.
asio::awaitable<bool> server::impl::send_file(connection_state& conn, const core::file_span& span,
                                              std::uint64_t& bytes) {
  auto& sock = conn.stream.socket();
  error_code ec;
  sock.native_non_blocking(true, ec);
  if (ec) co_return false;
  off_t offset = static_cast<off_t>(span.offset);
  std::uint64_t left = span.length;
  while (left > 0) {
    const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(left, 1U << 30));
    const ssize_t n = ::sendfile(sock.native_handle(), span.fd, &offset, chunk);
    if (n > 0) {
      left -= static_cast<std::uint64_t>(n);
      bytes += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n == 0) co_return false;  // the file is shorter than its index entry says
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) co_return false;
    asio::steady_timer deadline(sock.get_executor(), options.write_timeout);
    deadline.async_wait([&sock](const error_code& e) {
      if (!e) {
        error_code ignored;
        sock.cancel(ignored);
      }
    });
    co_await sock.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
    deadline.cancel();
    if (ec) co_return false;  // the client stalled past write_timeout, or went away
  }
  co_return true;
}

asio::awaitable<void> server::impl::linger(connection_state& conn) {
  error_code ec;
  conn.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) co_return;
  std::array<char, 16 * 1024> sink;
  std::size_t drained = 0;
  conn.stream.expires_after(std::chrono::seconds(2));
  while (drained < (16U << 20)) {
    const auto n =
        co_await conn.stream.async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    drained += n;
  }
}

void server::impl::start_tls(listener& l, accepted_socket& sock, std::size_t worker) {
  std::string problem;
  tcp::socket s(std::move(sock));
  auto t = make_tls_tunnel(std::move(s), l.options.tls, problem);
  if (!t) {
    log::warn("tls_handshake_failed", {{"listener", l.options.name}, {"error", problem}});
    metrics.connection_shed(l.options.name, "tls_failed");
    return;
  }
  std::shared_ptr<tls_tunnel> oldest;
  {
    std::lock_guard lock(mu);
    std::erase_if(l.handshakes, [](const std::weak_ptr<tls_tunnel>& w) { return w.expired(); });
    if (l.handshakes.size() >= k_max_handshakes) {
      oldest = l.handshakes.front().lock();
      l.handshakes.pop_front();
    }
    l.handshakes.push_back(t);
  }
  if (oldest) {
    close_tls_tunnel(oldest);
    metrics.connection_shed(l.options.name, "closed_handshake");
  }
  // Named: GCC 12 destroys temporaries in a co_spawn argument twice.
  auto task = serve_tls(std::move(t), l, worker);
  core::spawn(*workers[worker], std::move(task), on_exception("session"));
}

asio::awaitable<void> server::impl::serve_tls(std::shared_ptr<tls_tunnel> t, listener& l, std::size_t worker) {
  auto self = shared_from_this();
  std::string problem;
  auto handshaking = t;  // named: GCC 12 destroys temporaries in a co_await expression twice
  const int fd = co_await tls_handshake(std::move(handshaking), k_tls_handshake, problem);
  {
    std::lock_guard lock(mu);
    std::erase_if(l.handshakes, [&](const std::weak_ptr<tls_tunnel>& w) { return w.expired() || w.lock() == t; });
  }
  tcp::socket plain(*workers[worker]);
  error_code ec;
  if (fd >= 0) plain.assign(tcp::v4(), fd, ec);  // a Unix socket, used only to read and write
  if (fd < 0 || ec) {
    if (fd >= 0 && ec) ::close(fd);
    close_tls_tunnel(t);
    metrics.connection_shed(l.options.name, "tls_failed");
    if (refusal_log_due(l)) {
      log::warn("tls_handshake_failed", {{"listener", l.options.name}, {"error", fd < 0 ? problem : ec.message()}});
    }
    co_return;
  }
  // A peer now, admitted like any connection; a full listener says so in HTTP (the
  // asker sees "busy" and asks another holder), through the tunnel.
  if (!make_room(l)) {
    plain.non_blocking(true, ec);
    plain.write_some(asio::buffer(busy_answer().data(), busy_answer().size()), ec);
    plain.shutdown(tcp::socket::shutdown_send, ec);
    plain.close(ec);  // the tunnel sends the answer, then sees the end and closes
    co_return;
  }
  auto conn = std::make_shared<connection_state>(std::move(plain), l);
  conn->tunnel = t;
  conn->tunnel_drain = std::max(options.write_timeout, std::chrono::milliseconds(1));
  {
    std::lock_guard lock(mu);
    connections.insert(conn);
    ++l.open;
  }
  co_await session(conn, l, worker);
}

asio::awaitable<void> server::impl::session(std::shared_ptr<connection_state> conn, listener& l, std::size_t worker) {
  auto self = shared_from_this();
  // However the session ends (an exception included), the socket is closed and the
  // connection leaves the books.
  struct bookkeeping {
    impl& s;
    const std::shared_ptr<connection_state>& conn;
    listener& l;
    ~bookkeeping() {
      close_socket(*conn);
      std::lock_guard lock(s.mu);
      if (s.connections.erase(conn) > 0) --l.open;
    }
  } books{*this, conn, l};
  // Bounded: Beast does not limit a chunk-size line (extensions) or the trailers, so
  // without a cap one connection could make the buffer grow without end.
  beast::flat_buffer buffer(options.max_header_bytes + 64 * 1024);
  // Once shutdown has begun no reply is kept alive, so the loop ends after the
  // current one; a connection accepted just before still has its first request
  // answered.
  for (;;) {
    bool again = false;
    try {
      again = co_await serve_one(*conn, l, worker, buffer);
    } catch (const std::exception& e) {
      // Whatever went wrong, the connection is closed and accounted for below.
      log::error("session_exception", {{"listener", l.options.name}, {"error", e.what()}});
    }
    if (!again) break;
  }
}

asio::awaitable<bool> server::impl::serve_one(connection_state& conn, listener& l, std::size_t worker,
                                              beast::flat_buffer& buffer) {
  conn.set_idle(true);
  // A drain that began while the last reply was being written found the connection
  // busy, and that reply had already been promised keep-alive: it closes here, as an
  // idle one would have (the client retries its next request on a new connection).
  if (stopping && conn.used) co_return false;
  bhttp::request_parser<bhttp::string_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
  // The body's size is judged after the gate (below): a refusal for the secret comes
  // before one for the size.
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  conn.stream.expires_after(stopping && !conn.used ? std::chrono::milliseconds(k_first_request_grace)
                                                   : options.idle_timeout);
  error_code ec;
  co_await bhttp::async_read_header(conn.stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  incoming in;
  std::optional<handled> refused;
  if (!ec) {
    const auto& head = parser.get();
    in.method = std::string(head.method_string());
    in.target = std::string(head.target());
    in.worker = worker;
    for (const auto& f : head) {
      if (f.name() == bhttp::field::accept) {
        if (!in.accept.empty()) in.accept += ", ";
        in.accept += std::string(f.value());
      } else if (f.name() == bhttp::field::if_none_match) {
        if (!in.if_none_match.empty()) in.if_none_match += ", ";
        in.if_none_match += std::string(f.value());
      } else if (f.name() == bhttp::field::range && in.range.empty()) {
        in.range = std::string(f.value());
      } else if (f.name() == bhttp::field::authorization && in.authorization.empty()) {
        in.authorization = std::string(f.value());
      }
    }
    // A body is only read once the listener agrees to it (the admin port checks
    // the webhook secret first).
    if (!parser.is_done() && l.options.gate) refused = l.options.gate(in);
    if (!refused && !parser.is_done()) {
      if (const auto n = parser.content_length(); n && *n > l.options.max_body_bytes) {
        ec = bhttp::error::body_limit;
      } else {
        parser.body_limit(l.options.max_body_bytes);  // a chunked body, as it comes
        if (bhttp::token_list(head[bhttp::field::expect]).exists("100-continue")) {
          // The client waits for this before it sends the body.
          static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
          co_await asio::async_write(conn.stream, asio::buffer(go_on.data(), go_on.size()),
                                     asio::redirect_error(asio::use_awaitable, ec));
        }
        if (!ec) {
          co_await bhttp::async_read(conn.stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
        }
      }
    }
  }
  // Busy only once the whole request is in: a client that announces a body and never
  // sends it stays idle, so it can be shed to make room.
  if (!ec) {
    conn.set_idle(false);
    conn.used = true;
  }
  if (ec) {
    // A closed, timed-out or reset connection between requests is normal.
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::eof ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
        ec == asio::error::bad_descriptor ||
        (!parser.got_some() && buffer.size() == 0 && ec != bhttp::error::header_limit))
      co_return false;
    // A malformed request gets an answer before the connection closes.
    core::reply r;
    if (ec == bhttp::error::header_limit) {
      r = core::error_reply(core::failure::headers_too_large,
                            "request headers are larger than " + std::to_string(options.max_header_bytes) + " bytes");
    } else if ((ec == bhttp::error::unexpected_body || ec == bhttp::error::body_limit) && l.options.pull_only &&
               parser.get().method() != bhttp::verb::unknown && parser.get().method() != bhttp::verb::get &&
               parser.get().method() != bhttp::verb::head) {
      // (The request line is parsed before the Content-Length is refused.)
      // A push (PUT, POST, PATCH with its body): the method is what is refused.
      r = core::error_reply(
          core::failure::method_not_allowed,
          "Berth is a pull-only mirror: " + std::string(parser.get().method_string()) + " is not supported");
    } else if (ec == bhttp::error::buffer_overflow) {
      r = core::error_reply(core::failure::headers_too_large, "request headers, chunk sizes or trailers are too large");
    } else if (ec == bhttp::error::unexpected_body || ec == bhttp::error::body_limit) {
      r = core::error_reply(core::failure::body_too_large,
                            "request body is larger than " + std::to_string(l.options.max_body_bytes) + " bytes");
    } else {
      r = core::error_reply(core::failure::bad_request, "malformed HTTP request: " + ec.message());
    }
    std::uint64_t bytes = 0;
    co_await write_reply(conn, r, false, 11, false, bytes);
    metrics.http_request("invalid", in.method, r.status, std::chrono::duration<double>(0), bytes);
    co_await linger(conn);
    co_return false;
  }

  const auto started = clock_type::now();
  in_flight counted(metrics);
  auto& req = parser.get();
  in.body = std::move(req.body());
  handled h;
  if (refused) {
    h = std::move(*refused);
  } else {
    try {
      h = co_await l.handle(in);
    } catch (const std::exception& ex) {
      log::error("handler_exception", {{"method", in.method}, {"target", in.target}, {"error", ex.what()}});
      h.reply = core::error_reply(core::failure::internal, "internal error");
    }
  }
  const bool keep_alive = req.keep_alive() && !stopping && !refused && !conn.shed.load();
  std::uint64_t bytes = 0;
  bool ok = false;
  try {
    ok = co_await write_reply(conn, h.reply, in.method == "HEAD", req.version(), keep_alive, bytes);
  } catch (const std::exception& ex) {
    // A reply Beast cannot serialize (a header past its limits, say): the client
    // sees the connection close; the request is still logged and counted.
    log::error("reply_exception", {{"method", in.method}, {"target", in.target}, {"error", ex.what()}});
  }
  const std::chrono::duration<double> took = clock_type::now() - started;
  metrics.http_request(h.route, in.method, h.reply.status, took, bytes);
  if (l.options.access_log) {
    log::info("request", {{"method", in.method},
                          {"path", in.target},
                          {"ns", h.ns},
                          {"route", h.route},
                          {"status", h.reply.status},
                          {"bytes", bytes},
                          {"duration_ms", took.count() * 1000.0},
                          {"upstream_status", h.reply.upstream_status},
                          {"registry", h.reply.registry},
                          {"complete", ok}});
  }
  if (refused && ok) {
    co_await linger(conn);  // the unread body
  }
  const bool again = ok && keep_alive;
  co_return again;
}

}  // namespace berth::http
