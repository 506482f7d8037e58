#pragma once
// One upstream connection's byte stream: plain TCP, or TLS driven directly through
// OpenSSL on the non-blocking socket. Why not asio::ssl::stream + Beast's reader:
// they cost several posted handlers (each a reactor pass) per 16 KiB TLS record;
// here one read drains every record already readable (read-ahead, 64 KiB socket
// reads), so a large body costs a handful of wake-ups per megabyte.
// A watchdog enforces deadlines: moving the deadline is a variable write, and the
// one timer per connection re-arms only when it fires.
// Owned by one pooled connection, used by one coroutine at a time on one thread.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <memory>
#include <string>

using SSL = struct ssl_st;
using SSL_CTX = struct ssl_ctx_st;

namespace berth::upstream {

class transport {
 public:
  explicit transport(const boost::asio::any_io_executor& executor);
  ~transport();
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;

  // TCP connect to host:port, then, with `tls`, a TLS handshake with SNI and
  // hostname (or IP) verification; with `verify_name`, the certificate must name that
  // instead (another node reached by IP, whose certificate names the cluster's peers).
  // `public_only`: addresses that are loopback, link-local or unspecified are never
  // connected to (errc::redirect_refused when nothing else is left). Errors:
  // errc::connect_failed, timeout, tls_failed.
  boost::asio::awaitable<void> connect(const std::string& host, const std::string& port, SSL_CTX* tls,
                                       std::chrono::milliseconds timeout, boost::system::error_code& ec,
                                       bool public_only = false, const std::string& verify_name = {});

  // Reads what is available (at least one byte), up to the buffer's size. At the
  // peer's clean end: 0 and asio::error::eof. Errors: errc::timeout, connection_lost.
  boost::asio::awaitable<std::size_t> read_some(boost::asio::mutable_buffer buf, boost::system::error_code& ec);
  boost::asio::awaitable<void> write_all(boost::asio::const_buffer buf, boost::system::error_code& ec);

  // Operations fail with errc::timeout once this passes (until moved or cleared).
  void set_deadline(std::chrono::milliseconds from_now);
  void clear_deadline();

  // An idle connection is reusable if nothing arrived on it and the peer has not closed.
  bool reusable_when_idle();
  void close();

  struct watchdog;  // the deadline timer, shared with its pending wait

 private:
  boost::asio::awaitable<void> wait(bool for_read, boost::system::error_code& ec);
  void arm();

  boost::asio::ip::tcp::socket socket_;
  SSL* ssl_ = nullptr;
  std::shared_ptr<watchdog> dog_;
};

}  // namespace berth::upstream
