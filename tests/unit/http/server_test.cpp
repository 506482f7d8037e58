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
#include "test_client.hpp"

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
  const int fd = berth::testing::connect_to(port);
  if (fd < 0) return out;
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

namespace {

http::handler answer_ok() {
  return [](const http::incoming&) -> asio::awaitable<http::handled> {
    http::handled h;
    h.reply.body = "ok";
    co_return h;
  };
}

using berth::testing::plain_listener;

using berth::testing::connect_to;

// Reads one response with a Content-Length of at most a few bytes, or until the
// connection ends. "" if nothing came.
std::string read_some(int fd) {
  std::string out;
  char buf[4096];
  while (out.find("\r\n\r\n") == std::string::npos || out.find("ok") == std::string::npos) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

bool closed_by_peer(int fd) {
  char c;
  return ::recv(fd, &c, 1, 0) == 0;
}

template <class F>
bool within(std::chrono::milliseconds limit, F&& cond) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

}  // namespace

TEST(Server, OnShutdownAJustAcceptedConnectionStillHasItsFirstRequestAnswered) {
  // A client that connected just before the drain began has nothing to retry: its
  // request, arriving a moment later, is answered (and the connection closed after).
  running_server s(answer_ok(), plain_listener());
  const int fd = connect_to(s.port);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(within(std::chrono::seconds(2), [&] { return s.srv.open_connections() == 1; }));
  s.srv.begin_shutdown();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string req = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  const auto r = read_some(fd);
  EXPECT_EQ(r.substr(0, 12), "HTTP/1.1 200") << r;
  EXPECT_NE(r.find("Connection: close"), std::string::npos) << r;
  EXPECT_TRUE(closed_by_peer(fd));
  ::close(fd);
}

TEST(Server, OnShutdownAKeepAliveConnectionBetweenRequestsClosesAtOnceAndASilentOneAfterTheGrace) {
  running_server s(answer_ok(), plain_listener());
  const int used = connect_to(s.port);
  const int silent = connect_to(s.port);
  ASSERT_GE(used, 0);
  ASSERT_GE(silent, 0);
  const std::string req = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(used, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  ASSERT_EQ(read_some(used).substr(0, 12), "HTTP/1.1 200");
  ASSERT_TRUE(within(std::chrono::seconds(2), [&] { return s.srv.open_connections() == 2; }));
  s.srv.begin_shutdown();
  // The used one goes first: it is closed while the silent one is still open.
  EXPECT_TRUE(closed_by_peer(used));
  // (The session leaves the books just after the close reaches the client.)
  EXPECT_TRUE(within(std::chrono::milliseconds(500), [&] { return s.srv.open_connections() == 1; }))
      << "the silent connection waits out its grace";
  EXPECT_TRUE(closed_by_peer(silent)) << "closed once the grace is over (the read times out at 2 s)";
  ::close(used);
  ::close(silent);
}

TEST(Server, OnShutdownAConnectionBusyWritingItsReplyClosesOnceTheReplyIsOut) {
  // The reply was already promised keep-alive when the drain began: the drain must
  // still close the connection after it, not leave it open for the idle timeout
  // (the drain would wait for it until its deadline).
  const std::string big(32u << 20, 'b');
  running_server s(
      [&big](const http::incoming&) -> asio::awaitable<http::handled> {
        http::handled h;
        h.reply.body = big;
        co_return h;
      },
      plain_listener());
  const int fd = connect_to(s.port);
  ASSERT_GE(fd, 0);
  const std::string req = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  std::string head;
  char buf[65536];
  while (head.find("\r\n\r\n") == std::string::npos) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    head.append(buf, static_cast<std::size_t>(n));
  }
  ASSERT_EQ(head.find("Connection: close"), std::string::npos) << "kept alive when promised: " << head.substr(0, 200);
  // The server is blocked writing the rest (the client reads nothing meanwhile).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  s.srv.begin_shutdown();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::size_t body = head.size() - (head.find("\r\n\r\n") + 4);
  while (body < big.size()) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0) << "after " << body << " body bytes";
    body += static_cast<std::size_t>(n);
  }
  EXPECT_EQ(body, big.size());
  EXPECT_TRUE(closed_by_peer(fd)) << "closed once the reply was out (the read times out at 2 s)";
  EXPECT_TRUE(within(std::chrono::milliseconds(500), [&] { return s.srv.open_connections() == 0; }));
  ::close(fd);
}
