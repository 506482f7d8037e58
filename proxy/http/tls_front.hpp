#pragma once
// TLS for a listener (the peer endpoint's peers.tls): terminates TLS on an accepted
// connection and gives the server a plain socket to run its ordinary session on, so
// the session (and its sendfile path) stays the same for every listener. The plain
// socket is one end of a Unix socket pair; two coroutines pump bytes between the other
// end and the TLS stream. The server owns each tunnel's life: it aborts a handshake
// that takes too long or that it sheds for room, and closes the tunnel when the
// session ends (a tunnel never outlives its session). Peer traffic only: the mirror
// port is plain HTTP on loopback and never goes through this.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <memory>
#include <string>

using SSL_CTX = struct ssl_ctx_st;

namespace berth::http {

class tls_tunnel;

// A tunnel for `encrypted` with `ctx` (whose verify mode decides whether a client
// certificate is required); null (and `problem` set) when one cannot be made.
std::shared_ptr<tls_tunnel> make_tls_tunnel(boost::asio::ip::tcp::socket encrypted, SSL_CTX* ctx, std::string& problem);

// The handshake, within `timeout`. On success: the descriptor of the plain end of the
// pair (the caller owns it), and the pumps run on the connection's executor until
// close_tls_tunnel. On failure (or an abort): -1, `problem` set, the tunnel closed.
boost::asio::awaitable<int> tls_handshake(std::shared_ptr<tls_tunnel> t, std::chrono::milliseconds timeout,
                                          std::string& problem);

// Closes the connection and the pair's inner end: a handshake under way fails, the
// pumps end. From any thread (the work is posted to the tunnel's executor).
// With `drain`: the session has closed its end, and what it wrote is still on its way
// to the client; the tunnel closes by itself once that is sent, and is closed anyway
// after `drain` (a client that stopped reading).
void close_tls_tunnel(const std::shared_ptr<tls_tunnel>& t,
                      std::chrono::milliseconds drain = std::chrono::milliseconds(0));

}  // namespace berth::http
