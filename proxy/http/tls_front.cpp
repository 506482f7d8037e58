#include "http/tls_front.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>

namespace berth::http {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using unix_socket = asio::local::stream_protocol::socket;
using boost::system::error_code;

constexpr std::size_t k_buffer = 64 * 1024;

// One terminated connection: the TLS side and the inner end of the socket pair (the
// outer end, `plain`, goes to the session once the handshake is done).
class tls_tunnel {
 public:
  tls_tunnel(tcp::socket s, SSL* ssl, unix_socket inner, int plain)
      : tls(std::move(s), ssl), inner(std::move(inner)), drain_deadline(tls.get_executor()), plain(plain) {}
  ~tls_tunnel() {
    if (plain >= 0) ::close(plain);
  }
  tls_tunnel(const tls_tunnel&) = delete;
  tls_tunnel& operator=(const tls_tunnel&) = delete;

  ssl::stream<tcp::socket> tls;
  unix_socket inner;
  asio::steady_timer drain_deadline;  // armed once the session has closed its end
  int plain;                          // owned here until the handshake hands it to the session
  bool closed = false;

  // On the tunnel's executor.
  void close() {
    if (closed) return;
    closed = true;
    drain_deadline.cancel();  // nothing left to wait for (and nothing holds the loop)
    error_code ignored;
    inner.close(ignored);
    tls.next_layer().shutdown(tcp::socket::shutdown_both, ignored);
    tls.next_layer().close(ignored);
  }
};

namespace {

// Cleartext from the client to the session.
asio::awaitable<void> inbound(std::shared_ptr<tls_tunnel> t) {
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
  // and closes its end, which ends the outbound pump and the tunnel.
  error_code ignored;
  if (!t->closed) t->inner.shutdown(unix_socket::shutdown_send, ignored);
}

// The session's replies to the client. A client that stops reading blocks this write;
// the session's own write timeout then ends the session, which closes the tunnel.
asio::awaitable<void> outbound(std::shared_ptr<tls_tunnel> t) {
  std::array<char, k_buffer> buf{};
  for (;;) {
    error_code ec;
    const auto n = co_await t->inner.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (n > 0) {
      co_await asio::async_write(t->tls, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
    }
    if (ec) break;
  }
  t->close();
}

}  // namespace

std::shared_ptr<tls_tunnel> make_tls_tunnel(tcp::socket encrypted, SSL_CTX* ctx, std::string& problem) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    problem = std::string("socketpair: ") + std::strerror(errno);
    return nullptr;
  }
  SSL* ssl_handle = SSL_new(ctx);
  if (ssl_handle == nullptr) {
    ::close(pair[0]);
    ::close(pair[1]);
    problem = "cannot make a TLS session";
    return nullptr;
  }
  // Renegotiation is an old TLS 1.2 feature nothing here needs (and a CPU sink).
  SSL_set_options(ssl_handle, SSL_OP_NO_RENEGOTIATION);
  error_code ec;
  unix_socket inner(encrypted.get_executor());
  inner.assign(asio::local::stream_protocol(), pair[0], ec);
  if (ec) {
    SSL_free(ssl_handle);
    ::close(pair[0]);
    ::close(pair[1]);
    problem = "socket pair: " + ec.message();
    return nullptr;
  }
  return std::make_shared<tls_tunnel>(std::move(encrypted), ssl_handle, std::move(inner), pair[1]);
}

asio::awaitable<int> tls_handshake(std::shared_ptr<tls_tunnel> t, std::chrono::milliseconds timeout,
                                   std::string& problem) {
  auto executor = t->tls.get_executor();
  // A client that connects and says nothing holds its place no longer than `timeout`.
  // Shared with the timer's handler, which may run after this frame is gone (it fired
  // just as the handshake completed): it then finds `done` and leaves the tunnel be.
  struct race {
    bool done = false;
    bool timed_out = false;
  };
  auto state = std::make_shared<race>();
  asio::steady_timer timer(executor, timeout);
  timer.async_wait([weak = std::weak_ptr<tls_tunnel>(t), state](const error_code& e) {
    if (e || state->done) return;
    if (auto live = weak.lock()) {
      state->timed_out = true;
      live->close();
    }
  });
  error_code ec;
  co_await t->tls.async_handshake(ssl::stream_base::server, asio::redirect_error(asio::use_awaitable, ec));
  state->done = true;
  timer.cancel();
  if (!ec && t->closed) ec = asio::error::operation_aborted;  // closed as the handshake completed
  if (ec) {
    problem = state->timed_out                                    ? "handshake timed out"
              : ec == asio::error::operation_aborted || t->closed ? "closed during the handshake"
                                                                  : ec.message();
    t->close();
    co_return -1;
  }
  const int plain = t->plain;
  t->plain = -1;  // the session's now
  // Named: GCC 12 destroys temporaries in a co_spawn argument twice.
  auto in = inbound(t);
  auto out = outbound(t);
  asio::co_spawn(executor, std::move(in), asio::detached);
  asio::co_spawn(executor, std::move(out), asio::detached);
  co_return plain;
}

void close_tls_tunnel(const std::shared_ptr<tls_tunnel>& t, std::chrono::milliseconds drain) {
  if (!t) return;
  if (drain.count() == 0) {
    asio::post(t->tls.get_executor(), [t] { t->close(); });
    return;
  }
  // The outbound pump closes the tunnel once it has sent everything (it reads the
  // session's end of file); this is the deadline for a client that never reads it.
  asio::post(t->tls.get_executor(), [t, drain] {
    if (t->closed) return;
    t->drain_deadline.expires_after(drain);
    t->drain_deadline.async_wait([weak = std::weak_ptr<tls_tunnel>(t)](const error_code& ec) {
      if (ec) return;  // cancelled: the tunnel closed by itself
      if (auto live = weak.lock()) live->close();
    });
  });
}

}  // namespace berth::http
