// The hand-over of listening sockets between two servers, as between two Berth
// processes (here in one process: the descriptors travel over the same Unix socket).
#include "http/handover.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/server.hpp"
#include "metrics/metrics.hpp"
#include "test_client.hpp"

using namespace berth;
namespace asio = boost::asio;

namespace {

http::handler answer(std::string who) {
  return [who](const http::incoming&) -> asio::awaitable<http::handled> {
    http::handled h;
    h.reply.body = who;
    co_return h;
  };
}

http::listener_options options() {
  return berth::testing::plain_listener("mirror");
}

// Connects and sends one request; the answer is read later (the connection may sit
// in the listen queue until then).
int send_request(unsigned short port) {
  const int fd = berth::testing::connect_to(port, 5);
  EXPECT_GE(fd, 0);
  const std::string req = "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  return fd;
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string socket_path() {
  return (std::filesystem::temp_directory_path() / ("berth-handover-" + std::to_string(::getpid()) + ".sock")).string();
}

}  // namespace

TEST(Handover, ConnectionsQueuedOnTheOldListenerAreAnsweredByTheNewOne) {
  const auto path = socket_path();
  metrics::registry m;
  // The runner: its event loop is not running, so nothing it listens on is accepted.
  asio::io_context old_ctx{1};
  http::server old_srv({&old_ctx}, http::server_options{}, m);
  const auto port = old_srv.listen("127.0.0.1:0", answer("old"), options());
  const std::string address = "127.0.0.1:" + std::to_string(port);
  std::atomic<int> channel{-1};
  http::handover_server runner(
      path,
      [&] {
        std::map<std::string, http::handover_server::listener> out;
        for (auto [name, fd] : old_srv.listening_copies()) out[name] = {address, fd};
        return out;
      },
      [&](int c) { channel = c; }, m);
  // Three clients wait in the old listener's queue.
  std::vector<int> queued;
  for (int i = 0; i < 3; ++i) queued.push_back(send_request(port));

  auto inherited = http::take_over(path);
  ASSERT_TRUE(inherited.received());
  EXPECT_EQ(inherited.take("mirror", "127.0.0.1:1"), -1) << "another address binds afresh";
  asio::io_context new_ctx{1};
  http::server new_srv({&new_ctx}, http::server_options{}, m);
  const int fd = inherited.take("mirror", address);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(new_srv.listen(address, answer("new"), options(), fd), port);
  inherited.confirm();
  for (int i = 0; i < 200 && channel < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_GE(channel.load(), 0) << "the runner heard that the successor accepts";
  old_srv.begin_shutdown();  // what the runner does next; its own copies close
  std::thread t([&] { new_ctx.run_for(std::chrono::seconds(5)); });
  for (int q : queued) {
    const auto r = read_all(q);
    EXPECT_EQ(r.substr(0, 12), "HTTP/1.1 200") << "a queued connection was lost: " << r;
    EXPECT_TRUE(r.ends_with("new")) << r;
  }
  // The runner closes its cache, then says so; the successor hears it.
  EXPECT_FALSE(inherited.wait_released(std::chrono::milliseconds(50)));
  http::send_released(channel);
  EXPECT_TRUE(inherited.wait_released(std::chrono::seconds(2)));
  new_srv.begin_shutdown();
  new_ctx.stop();
  t.join();
}

TEST(Handover, NobodyThereOrAStaleFileMeansNothingToTake) {
  const auto path = socket_path();
  std::filesystem::remove(path);
  EXPECT_FALSE(http::take_over(path).received());
  {
    metrics::registry m;
    asio::io_context ctx{1};
    http::server srv({&ctx}, http::server_options{}, m);
    srv.listen("127.0.0.1:0", answer("x"), options());
    http::handover_server runner(
        path, [] { return std::map<std::string, http::handover_server::listener>{}; }, [](int) {}, m);
    // A runner that is stopping has nothing to give.
    EXPECT_FALSE(http::take_over(path).received());
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << "the runner removes its own socket file";
}
