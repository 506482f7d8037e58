#include "http/tls_front.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>
#include <memory>

namespace berth::http {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using unix_socket = asio::local::stream_protocol::socket;
using boost::system::error_code;

namespace {

constexpr std::size_t k_buffer = 64 * 1024;

// One terminated connection: the TLS side and the inner end of the socket pair, alive
// while either pump runs.
struct tunnel {
  tunnel(tcp::socket s, SSL* ssl, unix_socket inner) : tls(std::move(s), ssl), inner(std::move(inner)) {}
  ssl::stream<tcp::socket> tls;
  unix_socket inner;
  bool closed = false;
  // Either direction ended: both end (the session sees EOF, or the client does).
  void close() {
    if (closed) return;
    closed = true;
    error_code ignored;
    inner.close(ignored);
    tls.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
    tls.next_layer().close(ignored);
  }
};

// Cleartext from the client to the session.
asio::awaitable<void> inbound(std::shared_ptr<tunnel> t) {
  std::array<char, k_buffer> buf{};
  for (;;) {
    error_code ec;
    const auto n = co_await t->tls.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (n > 0) {
      co_await asio::async_write(t->inner, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
    }
    if (ec) break;
  }
  // The client is done sending (or gone): the session reads EOF, answers what it has
  // and closes its end, which ends the outbound pump.
  error_code ignored;
  if (!t->closed) t->inner.shutdown(unix_socket::shutdown_send, ignored);
}

// The session's replies to the client.
asio::awaitable<void> outbound(std::shared_ptr<tunnel> t) {
  std::array<char, k_buffer> buf{};
  for (;;) {
    error_code ec;
    const auto n = co_await t->inner.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (n > 0) {
      co_await asio::async_write(t->tls, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
    }
    if (ec) break;
  }
  // The session closed its end: so does the connection (no close_notify exchange: a
  // client that never answers one must not hold the tunnel open).
  t->close();
}

std::string tls_problem(const error_code& ec) {
  if (ec == asio::error::operation_aborted) return "handshake timed out";
  return ec.message();  // for OpenSSL's errors, its reason ("peer did not return a certificate", ...)
}

}  // namespace

asio::awaitable<int> terminate_tls(tcp::socket encrypted, SSL_CTX* ctx, std::chrono::milliseconds timeout,
                                   std::string& problem) {
  auto executor = encrypted.get_executor();
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    problem = std::string("socketpair: ") + std::strerror(errno);
    co_return -1;
  }
  SSL* ssl_handle = SSL_new(ctx);
  if (ssl_handle == nullptr) {
    ::close(pair[0]);
    ::close(pair[1]);
    problem = "cannot make a TLS session";
    co_return -1;
  }
  error_code ec;
  unix_socket inner(executor);
  inner.assign(asio::local::stream_protocol(), pair[0], ec);
  if (ec) {
    SSL_free(ssl_handle);
    ::close(pair[0]);
    ::close(pair[1]);
    problem = "socket pair: " + ec.message();
    co_return -1;
  }
  auto t = std::make_shared<tunnel>(std::move(encrypted), ssl_handle, std::move(inner));
  // The handshake within `timeout`: a client that connects and says nothing holds a
  // connection slot no longer than that.
  asio::steady_timer timer(executor, timeout);
  timer.async_wait([weak = std::weak_ptr<tunnel>(t)](const error_code& e) {
    if (e) return;
    if (auto live = weak.lock()) {
      error_code ignored;
      live->tls.next_layer().cancel(ignored);
    }
  });
  co_await t->tls.async_handshake(ssl::stream_base::server, asio::redirect_error(asio::use_awaitable, ec));
  timer.cancel();
  if (ec) {
    problem = tls_problem(ec);
    t->close();
    ::close(pair[1]);
    co_return -1;
  }
  // Named: GCC 12 destroys temporaries in a co_await expression twice (and in co_spawn's).
  auto in = inbound(t);
  auto out = outbound(t);
  asio::co_spawn(executor, std::move(in), asio::detached);
  asio::co_spawn(executor, std::move(out), asio::detached);
  co_return pair[1];
}

}  // namespace berth::http
