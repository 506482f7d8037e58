#include "http/server.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/metrics.hpp"

using namespace berth;
namespace asio = boost::asio;

namespace {

// A server with one worker thread, as Berth runs its admin port.
struct running_server {
  asio::io_context ctx{1};
  metrics::registry metrics;
  http::server srv{{&ctx}, http::server_options{}, metrics};
  unsigned short port = 0;
  std::thread thread;
  running_server(http::handler h, http::listener_options o) {
    port = srv.listen("127.0.0.1:0", std::move(h), std::move(o));
    thread = std::thread([this] { ctx.run(); });
  }
  ~running_server() {
    srv.begin_shutdown();
    ctx.stop();
    thread.join();
  }
};

struct exchange_result {
  std::string data;
  bool closed = false;  // the server closed the connection (else the read timed out)
};

// Sends `request` over a fresh connection, reads until the server closes it or
// nothing comes for two seconds.
exchange_result exchange(unsigned short port, const std::string& request) {
  exchange_result out;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return out;
  }
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  char buf[4096];
  for (;;) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      out.data.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    out.closed = n == 0;
    break;
  }
  ::close(fd);
  return out;
}

}  // namespace

TEST(Server, AReplyThatCannotBeWrittenStillEndsTheRequestCleanly) {
  // A header longer than Beast can serialize (64 KiB): writing the reply throws.
  running_server s(
      [](const http::incoming&) -> asio::awaitable<http::handled> {
        http::handled h;
        h.route = "test";
        h.reply.headers.set("X-Huge", std::string(70000, 'a'));
        h.reply.body = "never sent";
        co_return h;
      },
      {.name = "test",
       .access_log = true,
       .max_body_bytes = 0,
       .pull_only = false,
       .gate = nullptr,
       .max_connections = 0});
  const auto r = exchange(s.port, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(r.closed) << "the connection is closed, not left open: " << r.data.substr(0, 200);
  const auto text = s.metrics.serialize();
  EXPECT_NE(text.find("berth_http_requests_in_flight 0"), std::string::npos) << "the gauge came back down";
  EXPECT_NE(text.find(R"(berth_http_requests_total{method="GET",route="test",status="200"} 1)"), std::string::npos)
      << "the request was counted";
  // The server still serves: the next connection is answered (and closed the same way).
  EXPECT_TRUE(exchange(s.port, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n").closed);
}

TEST(Server, TheGateRefusesBeforeTheBodyIsRead) {
  running_server s(
      [](const http::incoming&) -> asio::awaitable<http::handled> {
        http::handled h;
        h.reply.body = "read";
        co_return h;
      },
      {.name = "test",
       .access_log = false,
       .max_body_bytes = 1 << 20,
       .pull_only = false,
       .gate = [](const http::incoming& in) -> std::optional<http::handled> {
         if (in.authorization == "yes") return std::nullopt;
         http::handled h;
         h.reply.status = 401;
         return h;
       },
       .max_connections = 0});
  // Headers announce a megabyte that never comes: the answer cannot wait for it.
  const auto refused = exchange(s.port, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n");
  EXPECT_EQ(refused.data.substr(0, 12), "HTTP/1.1 401");
  const auto let_in = exchange(s.port,
                               "POST /x HTTP/1.1\r\nHost: x\r\nAuthorization: yes\r\nConnection: close\r\n"
                               "Content-Length: 3\r\n\r\nabc");
  EXPECT_EQ(let_in.data.substr(0, 12), "HTTP/1.1 200");
  EXPECT_NE(let_in.data.find("read"), std::string::npos);
}
