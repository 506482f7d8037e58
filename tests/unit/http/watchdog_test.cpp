#include "http/watchdog.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <filesystem>
#include <thread>

#include <unistd.h>

using namespace berth;
using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {
// Two event loops on their own threads, as Berth's workers.
struct loops {
  asio::io_context a{1}, b{1};
  asio::executor_work_guard<asio::io_context::executor_type> ga = asio::make_work_guard(a);
  asio::executor_work_guard<asio::io_context::executor_type> gb = asio::make_work_guard(b);
  std::thread ta{[this] { a.run(); }}, tb{[this] { b.run(); }};
  ~loops() {
    ga.reset();
    gb.reset();
    a.stop();
    b.stop();
    ta.join();
    tb.join();
  }
};
}  // namespace

TEST(Watchdog, HealthyLoopsAreLeftAlone) {
  loops l;
  std::atomic<int> fired{0};
  http::watchdog w({&l.a, &l.b}, 300ms, [&](std::size_t, std::chrono::milliseconds) { ++fired; });
  w.start();
  std::this_thread::sleep_for(800ms);
  EXPECT_TRUE(w.live());
  w.stop();
  EXPECT_EQ(fired, 0);
}

TEST(Watchdog, AStuckLoopIsReportedAndHealthzGoesDownFirst) {
  loops l;
  std::atomic<int> fired{0};
  std::atomic<std::size_t> which{99};
  http::watchdog w({&l.a, &l.b}, 400ms, [&](std::size_t loop, std::chrono::milliseconds late) {
    which = loop;
    EXPECT_GT(late, 400ms);
    ++fired;
  });
  w.start();
  std::this_thread::sleep_for(100ms);
  asio::post(l.b, [] { std::this_thread::sleep_for(1500ms); });  // a wedged worker
  const auto started = std::chrono::steady_clock::now();
  bool went_down = false;
  while (std::chrono::steady_clock::now() - started < 1200ms && fired == 0) {
    went_down = went_down || !w.live();
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(went_down) << "live() turns false at half the limit, before the watchdog fires";
  for (int i = 0; i < 100 && fired == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(which, 1u) << "the stuck loop is named";
  EXPECT_LT(std::chrono::steady_clock::now() - started, 1400ms) << "fired within the limit plus a beat";
  w.stop();
}

TEST(Watchdog, TheExitRecordIsReadOnce) {
  const auto path = std::filesystem::temp_directory_path() / ("berth-exit-" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  EXPECT_EQ(http::take_exit_record(path.string()), "");
  http::record_exit(path.string(), "stuck_loop worker=1");
  EXPECT_EQ(http::take_exit_record(path.string()), "stuck_loop worker=1");
  EXPECT_EQ(http::take_exit_record(path.string()), "") << "reported by one run only";
}
