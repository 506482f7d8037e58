#include "upstream/transport.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "core/log.hpp"
#include "upstream/client.hpp"

namespace berth::upstream {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {
// Addresses a redirect from the outside must not reach: this host (loopback, and
// the unspecified address that connects to it) and link-local (cloud metadata).
bool internal_address(const asio::ip::address& a) {
  if (a.is_loopback() || a.is_unspecified()) return true;
  if (a.is_v4()) {
    const auto b = a.to_v4().to_bytes();
    return b[0] == 169 && b[1] == 254;
  }
  const auto v6 = a.to_v6();
  if (v6.is_link_local() || v6.is_v4_mapped()) {
    return v6.is_link_local() || internal_address(asio::ip::make_address_v4(asio::ip::v4_mapped, v6));
  }
  return false;
}
}  // namespace

struct transport::watchdog {
  explicit watchdog(const asio::any_io_executor& ex) : timer(ex) {}
  asio::steady_timer timer;
  tcp::socket* socket = nullptr;  // null once the transport is gone
  clock_type::time_point deadline = clock_type::time_point::max();
  clock_type::time_point armed_for = clock_type::time_point::max();
  bool fired = false;
};

namespace {

// Re-arms `dog` for its deadline; on expiry it cancels the socket's waits.
void arm_dog(const std::shared_ptr<transport::watchdog>& dog);

}  // namespace

transport::transport(const asio::any_io_executor& executor)
    : socket_(executor), dog_(std::make_shared<watchdog>(executor)) {
  dog_->socket = &socket_;
}

transport::~transport() {
  dog_->socket = nullptr;
  dog_->timer.cancel();
  close();
}

void transport::close() {
  dog_->timer.cancel();  // a closed connection keeps no timer (and no event loop) alive
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  error_code ignored;
  socket_.close(ignored);
}

namespace {
void arm_dog(const std::shared_ptr<transport::watchdog>& dog) {
  dog->armed_for = dog->deadline;
  dog->timer.expires_at(dog->deadline);
  dog->timer.async_wait([dog](const error_code& ec) {
    if (ec) return;  // re-armed or destroyed
    dog->armed_for = clock_type::time_point::max();
    if (dog->socket == nullptr || dog->deadline == clock_type::time_point::max()) return;
    if (clock_type::now() >= dog->deadline) {
      dog->fired = true;
      error_code ignored;
      dog->socket->cancel(ignored);
    } else {
      arm_dog(dog);
    }
  });
}
}  // namespace

void transport::arm() {
  arm_dog(dog_);
}

void transport::set_deadline(std::chrono::milliseconds from_now) {
  dog_->deadline = clock_type::now() + from_now;
  dog_->fired = false;
  if (dog_->armed_for > dog_->deadline) arm();
}

void transport::clear_deadline() {
  dog_->deadline = clock_type::time_point::max();
  dog_->fired = false;
}

asio::awaitable<void> transport::wait(bool for_read, error_code& ec) {
  if (dog_->fired) {
    ec = errc::timeout;
    co_return;
  }
  co_await socket_.async_wait(for_read ? tcp::socket::wait_read : tcp::socket::wait_write,
                              asio::redirect_error(asio::use_awaitable, ec));
  if (dog_->fired) {
    ec = errc::timeout;
  } else if (ec) {
    ec = errc::connection_lost;
  }
}

asio::awaitable<void> transport::connect(const std::string& host, const std::string& port, SSL_CTX* tls,
                                         std::chrono::milliseconds timeout, error_code& ec, bool public_only,
                                         const std::string& verify_name) {
  set_deadline(timeout);
  tcp::resolver resolver(socket_.get_executor());
  auto resolved = co_await resolver.async_resolve(host, port, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    ec = errc::connect_failed;
    co_return;
  }
  std::vector<tcp::endpoint> endpoints;
  for (const auto& r : resolved) {
    if (!public_only || !internal_address(r.endpoint().address())) endpoints.push_back(r.endpoint());
  }
  if (endpoints.empty()) {  // checked on what is connected to, so DNS cannot rebind it
    log::warn("upstream_redirect_refused",
              {{"to_host", host},
               {"detail", "a loopback, link-local or unspecified address; list it in registries[].redirect_hosts"}});
    ec = errc::redirect_refused;
    co_return;
  }
  co_await asio::async_connect(socket_, endpoints, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    ec = dog_->fired ? error_code(errc::timeout) : error_code(errc::connect_failed);
    co_return;
  }
  socket_.set_option(tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);
  if (ec) {
    ec = errc::connect_failed;
    co_return;
  }
  if (tls == nullptr) {
    clear_deadline();
    co_return;
  }
  ssl_ = SSL_new(tls);
  if (ssl_ == nullptr || SSL_set_fd(ssl_, socket_.native_handle()) != 1) {
    ec = errc::tls_failed;
    co_return;
  }
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
  // Many servers close without close_notify; message framing (Content-Length,
  // chunks) is what tells a truncated body, so a bare EOF reads as an end.
  SSL_set_options(ssl_, SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_set_read_ahead(ssl_, 1);
  SSL_set_default_read_buffer_len(ssl_, 64 * 1024);
  error_code addr_ec;
  asio::ip::make_address(host, addr_ec);
  if (!verify_name.empty()) {
    SSL_set_tlsext_host_name(ssl_, verify_name.c_str());
    SSL_set1_host(ssl_, verify_name.c_str());
  } else if (addr_ec) {
    SSL_set_tlsext_host_name(ssl_, host.c_str());
    SSL_set1_host(ssl_, host.c_str());
  } else {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
  }
  SSL_set_verify(ssl_, SSL_VERIFY_PEER, nullptr);
  while (true) {
    ERR_clear_error();
    const int r = SSL_connect(ssl_);
    if (r == 1) break;
    const int err = SSL_get_error(ssl_, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      co_await wait(err == SSL_ERROR_WANT_READ, ec);
      if (ec) {
        if (ec != errc::timeout) ec = errc::tls_failed;
        co_return;
      }
      continue;
    }
    const long verify = SSL_get_verify_result(ssl_);
    char reason[256] = "handshake failed";
    if (verify != X509_V_OK) {
      std::snprintf(reason, sizeof reason, "certificate: %s", X509_verify_cert_error_string(verify));
    } else if (const auto e = ERR_peek_last_error(); e != 0) {
      ERR_error_string_n(e, reason, sizeof reason);
    }
    log::warn("upstream_tls_failed", {{"host", host}, {"port", port}, {"error", std::string_view(reason)}});
    ec = errc::tls_failed;
    co_return;
  }
  clear_deadline();
}

asio::awaitable<std::size_t> transport::read_some(asio::mutable_buffer buf, error_code& ec) {
  ec = {};
  if (buf.size() == 0) co_return 0;
  if (ssl_ == nullptr) {
    while (true) {
      const auto n = socket_.read_some(buf, ec);
      if (!ec) co_return n;
      if (ec == asio::error::eof) co_return 0;
      if (ec != asio::error::would_block && ec != asio::error::try_again) {
        ec = errc::connection_lost;
        co_return 0;
      }
      co_await wait(true, ec);
      if (ec) co_return 0;
    }
  }
  auto* p = static_cast<unsigned char*>(buf.data());
  std::size_t total = 0;
  while (true) {
    ERR_clear_error();
    std::size_t n = 0;
    const int r = SSL_read_ex(ssl_, p + total, buf.size() - total, &n);
    if (r == 1) {
      total += n;
      if (total == buf.size()) co_return total;
      continue;
    }
    const int err = SSL_get_error(ssl_, r);
    if (total > 0) co_return total;  // hand over what we have; anything else shows next time
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      co_await wait(err == SSL_ERROR_WANT_READ, ec);
      if (ec) co_return 0;
      continue;
    }
    ec = err == SSL_ERROR_ZERO_RETURN ? error_code(asio::error::eof) : error_code(errc::connection_lost);
    co_return 0;
  }
}

asio::awaitable<void> transport::write_all(asio::const_buffer buf, error_code& ec) {
  ec = {};
  const auto* p = static_cast<const unsigned char*>(buf.data());
  std::size_t left = buf.size();
  while (left > 0) {
    std::size_t n = 0;
    bool want_read = false;
    if (ssl_ == nullptr) {
      n = socket_.write_some(asio::buffer(p, left), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) {
        ec = {};
        n = 0;
      } else if (ec) {
        ec = errc::connection_lost;
        co_return;
      }
    } else {
      ERR_clear_error();
      const int r = SSL_write_ex(ssl_, p, left, &n);
      if (r != 1) {
        const int err = SSL_get_error(ssl_, r);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
          ec = errc::connection_lost;
          co_return;
        }
        want_read = err == SSL_ERROR_WANT_READ;
        n = 0;
      }
    }
    p += n;
    left -= n;
    if (left > 0 && n == 0) {
      co_await wait(want_read, ec);
      if (ec) co_return;
    }
  }
}

bool transport::reusable_when_idle() {
  if (!socket_.is_open()) return false;
  if (ssl_ != nullptr && SSL_has_pending(ssl_)) return false;
  char c;
  const auto n = ::recv(socket_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace berth::upstream
