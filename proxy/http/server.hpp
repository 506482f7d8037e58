#pragma once
// HTTP/1.1 listeners and sessions. A session only reads requests and writes
// replies; what to answer is the handler's business. Accepting happens on the
// first worker; each connection then lives on one worker's io_context (one
// thread), round robin.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/reply.hpp"
#include "http/options.hpp"

using SSL_CTX = struct ssl_ctx_st;

namespace boost::asio::ip {
class address;
}
namespace berth::metrics {
class registry;
}

namespace berth::http {

// What a handler sees of a request.
struct incoming {
  std::string method;
  std::string target;
  std::string accept;  // every Accept line joined with ", "
  std::string range;
  std::string if_none_match;  // every If-None-Match line joined with ", "
  std::string authorization;  // admin endpoints only (the pull path never looks at it)
  std::string body;           // empty unless the listener accepts bodies
  std::size_t worker = 0;     // index of the worker thread serving it
};

struct handled {
  core::reply reply;
  std::string route = "other";
  std::string ns;
};

using handler = std::function<boost::asio::awaitable<handled>(const incoming&)>;

// Renders an OCI error body: {"errors":[{"code":..,"message":..}]}.
std::string error_body(const core::oci_error& e);

// Looks at a request's head before its body is read: a reply refuses the request
// without reading the body (the admin port checks the webhook secret first).
using body_gate = std::function<std::optional<handled>(const incoming&)>;

struct listener_options {
  std::string name;  // "mirror" or "admin", in logs and metric labels
  bool access_log = false;
  // A request body is read whole before the handler runs; a larger one gets 413.
  std::size_t max_body_bytes = 0;
  // Serves only GET and HEAD: a request of another method whose body is too large is
  // refused for its method (405), not its size. A GET's body is read and ignored.
  bool pull_only = false;
  body_gate gate;  // asked before any body is read; null: every body up to the cap
  // Open connections at most. At the limit, a new connection closes the longest idle
  // one; with none idle it is answered 503 and closed. 0: no limit.
  std::size_t max_connections = 0;
  // Who may connect: a connection from an address this refuses is closed at once,
  // before a byte of it is read. Null: anyone.
  std::function<bool(const boost::asio::ip::address&)> allow{};
  // TLS on this listener (peers.tls): each connection's TLS is terminated before its
  // session (see tls_front.hpp); the context's verify mode decides whether a client
  // certificate is required. Null: plain HTTP.
  SSL_CTX* tls = nullptr;
  // How long listen() retries an address in use (a predecessor still draining on it)
  // before it gives up. 0: not at all.
  std::chrono::milliseconds bind_wait{0};
};

class server {
 public:
  server(std::vector<boost::asio::io_context*> workers, server_options options, metrics::registry& metrics);
  ~server();

  // Binds "host:port" (port 0 picks one) and starts accepting. Throws on a bad
  // address or a bind failure. Returns the bound port. With `inherited_fd` (a
  // listening socket a predecessor handed over, now owned by the server) it accepts
  // on that socket instead of binding.
  unsigned short listen(const std::string& address, handler h, listener_options options, int inherited_fd = -1);

  // Copies (dup) of the listening sockets, by listener name, for a successor; the
  // caller closes them. Empty once shutdown has begun. Thread-safe.
  std::map<std::string, int> listening_copies() const;

  // Stops accepting, closes idle keep-alive connections, and asks busy ones to
  // close after their current response. Thread-safe.
  void begin_shutdown();
  // Closes every connection, busy ones too (the drain deadline passed): their
  // sessions end at once. Thread-safe.
  void close_all();
  std::size_t open_connections() const;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace berth::http
