#pragma once
// The upstream registry client: HTTP/1.1 over TCP or TLS (SNI, hostname
// verification), a keep-alive pool per worker thread, the Docker token auth flow
// with the robot credentials, and redirects (Authorization only ever goes to the
// registry's own endpoint origin).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/body_source.hpp"
#include "core/headers.hpp"
#include "upstream/options.hpp"

using SSL_CTX = struct ssl_ctx_st;

namespace berth::metrics {
class registry;
}

namespace berth::upstream {

class token_cache;

enum class errc {
  connect_failed = 1,  // DNS, refused, unreachable
  timeout,             // connect, response headers or a body stall
  tls_failed,          // handshake or certificate verification
  protocol_error,      // unparsable response
  connection_lost,     // the connection broke mid-response
  too_many_redirects,
  bad_redirect,
  pool_exhausted,    // no connection slot within pool_wait_timeout
  body_too_large,    // read_all over its limit
  token_failed,      // the token service did not answer usefully
  redirect_refused,  // a redirect to a host outside redirect_hosts, or to an internal address
  shutting_down,     // the client was shut down: no new connections
};
const boost::system::error_category& error_category();
inline boost::system::error_code make_error_code(errc e) {
  return {static_cast<int>(e), error_category()};
}

// scheme://host[:port]
struct origin {
  std::string scheme;  // "http" or "https"
  std::string host;    // lower-case; IPv6 without brackets
  std::string port;    // always set ("443" for https by default)
  // Never connect to a loopback, link-local or unspecified address (a redirect target
  // not listed in redirect_hosts: a compromised upstream must not make Berth a relay).
  bool public_only = false;
  bool tls() const { return scheme == "https"; }
  std::string str() const;          // "https://host:port"
  std::string host_header() const;  // "host" or "host:port" (default ports dropped)
  friend bool operator==(const origin&, const origin&) = default;
};

// Parses an absolute http(s) URL; `target` receives path and query ("/" if none).
std::optional<origin> parse_url(std::string_view url, std::string* target = nullptr);

// One upstream registry at run time: options, TLS context, credentials. Shared by all
// worker threads; thread-safe.
class registry {
 public:
  // Throws std::runtime_error when the endpoint is not a URL or the CA file is unusable.
  registry(registry_options options, token_cache& tokens, metrics::registry& metrics);
  ~registry();
  const registry_options& options() const;
  const std::string& id() const { return options().id(); }
  const origin& endpoint() const;
  // Loads the credentials now; returns an error message or "".
  std::string load_credentials();

  struct impl;
  impl& internals() { return *impl_; }

 private:
  std::unique_ptr<impl> impl_;
};

struct request {
  std::string method = "GET";  // GET or HEAD
  std::string target;          // path and query, e.g. "/v2/library/app/manifests/1.0"
  std::string repository;      // names the token scope: repository:<repository>:pull
  std::string accept;          // forwarded as is (all client Accept lines joined)
  std::string range;           // forwarded if set
};

struct response {
  unsigned status = 0;
  core::headers headers;
  std::unique_ptr<core::body_source> body;  // null for HEAD or an empty body

  // Reads the remaining body into `out`; fails with errc::body_too_large past `limit`.
  boost::asio::awaitable<void> read_all(std::string& out, std::size_t limit, boost::system::error_code& ec);
};

// What the mirror asks of an upstream: one exchange with a registry, auth
// challenges answered and redirects followed. The client implements it; unit tests
// script it. Used only from its executor's thread.
class fetcher {
 public:
  virtual ~fetcher() = default;
  // An HTTP error status is a response, not an error; `ec` is set only when no
  // usable response came.
  virtual boost::asio::awaitable<response> fetch(registry& reg, request req, boost::system::error_code& ec) = 0;
  // The worker's executor this fetcher belongs to.
  virtual const boost::asio::any_io_executor& executor() const = 0;
  // One exchange with `to` as it is (another Berth node's peer endpoint, plain HTTP):
  // no token flow, no redirects; `authorization` is sent as is. `timeout` bounds the
  // wait for the response headers and every gap in the body. Metrics name it
  // `label`. A fetcher that reaches no other node fails with errc::connect_failed.
  virtual boost::asio::awaitable<response> fetch_direct(const origin& to, request req, std::string authorization,
                                                        std::chrono::milliseconds timeout, std::string label,
                                                        boost::system::error_code& ec);
};

// One per worker thread, used only from that thread's io_context.
class client final : public fetcher {
 public:
  client(boost::asio::any_io_executor executor, pool_options options, metrics::registry& metrics);
  ~client() override;
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // Sends `req` to the registry, answering auth challenges and following redirects.
  boost::asio::awaitable<response> fetch(registry& reg, request req, boost::system::error_code& ec) override;
  const boost::asio::any_io_executor& executor() const override;
  boost::asio::awaitable<response> fetch_direct(const origin& to, request req, std::string authorization,
                                                std::chrono::milliseconds timeout, std::string label,
                                                boost::system::error_code& ec) override;
  // fetch_direct to an https origin (another node with peers.tls) uses `ctx` (this
  // node's certificate, the peers' CA; a reference of its own is taken), and the
  // server's certificate must name `verify_name`. Without it such a fetch fails with
  // errc::tls_failed. Call before the client is used.
  void set_direct_tls(SSL_CTX* ctx, std::string verify_name);
  // For shutdown: closes every connection, idle or busy (their reads fail at once),
  // and refuses new ones (errc::shutting_down). Thread-safe: runs on the client's
  // executor.
  void shutdown();

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace berth::upstream

template <>
struct boost::system::is_error_code_enum<berth::upstream::errc> : std::true_type {};
