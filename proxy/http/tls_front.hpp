#pragma once
// TLS for a listener (the peer endpoint's peers.tls): terminates TLS on an accepted
// connection and gives the server a plain socket to run its ordinary session on, so
// the session (and its sendfile path) stays the same for every listener. The plain
// socket is one end of a Unix socket pair; two coroutines pump bytes between the other
// end and the TLS stream until either side closes. Peer traffic only: the mirror port
// is plain HTTP on loopback and never goes through this.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <string>

using SSL_CTX = struct ssl_ctx_st;

namespace berth::http {

// Handshakes on `encrypted` with `ctx` (whose verify mode decides whether a client
// certificate is required) within `timeout`. On success returns the descriptor of a
// plain stream socket whose bytes are the connection's cleartext (the caller owns it)
// and keeps pumping on the connection's executor; on failure closes the connection,
// sets `problem` and returns -1.
boost::asio::awaitable<int> terminate_tls(boost::asio::ip::tcp::socket encrypted, SSL_CTX* ctx,
                                          std::chrono::milliseconds timeout, std::string& problem);

}  // namespace berth::http
