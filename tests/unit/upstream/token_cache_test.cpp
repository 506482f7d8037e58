#include "upstream/token_cache.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <thread>

namespace asio = boost::asio;
using namespace berth::upstream;

namespace {

// A fetcher that takes a while, like a real token service, and counts calls.
token_cache::fetcher slow_fetcher(std::atomic<int>& calls, std::string token, std::chrono::seconds ttl,
                                  unsigned status = 200) {
  return [&calls, token, ttl, status]() -> asio::awaitable<token_result> {
    ++calls;
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(50));
    co_await t.async_wait(asio::use_awaitable);
    token_result r;
    r.status = status;
    if (status == 200) {
      r.token = token;
      r.expires_in = ttl;
    } else {
      r.error = "denied";
    }
    co_return r;
  };
}

// Runs one coroutine to completion on a fresh single-threaded io_context. `body`
// stays alive (here) for as long as its coroutine runs.
template <class F>
void run(F body) {
  asio::io_context ctx(1);
  asio::co_spawn(ctx, body(), asio::detached);
  ctx.run();
}

}  // namespace

TEST(TokenCache, HundredConcurrentRequestsOnTwoThreadsFetchOnce) {
  token_cache cache;
  std::atomic<int> calls{0};
  std::atomic<int> got{0};
  asio::io_context a(1), b(1);
  for (int i = 0; i < 100; ++i) {
    auto& ctx = i % 2 ? a : b;
    asio::co_spawn(
        ctx,
        [&]() -> asio::awaitable<void> {
          auto r = co_await cache.get("reg\nrealm\nsvc\nrepository:library/app:pull",
                                      slow_fetcher(calls, "tok-1", std::chrono::seconds(1800)));
          if (r.ok() && r.token == "tok-1") ++got;
        },
        asio::detached);
  }
  std::thread t([&] { a.run(); });
  b.run();
  t.join();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(got.load(), 100);
  EXPECT_EQ(cache.peek("reg\nrealm\nsvc\nrepository:library/app:pull"), "tok-1");
}

TEST(TokenCache, FailuresReachEveryWaiterAndAreNotCached) {
  token_cache cache;
  std::atomic<int> calls{0};
  int denied = 0;
  asio::io_context ctx(1);
  for (int i = 0; i < 10; ++i) {
    asio::co_spawn(
        ctx,
        [&]() -> asio::awaitable<void> {
          auto r = co_await cache.get("k", slow_fetcher(calls, "", std::chrono::seconds(60), 401));
          if (!r.ok() && r.status == 401) ++denied;
        },
        asio::detached);
  }
  ctx.run();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(denied, 10);
  EXPECT_EQ(cache.peek("k"), "");
  // The next request tries again.
  ctx.restart();
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> { co_await cache.get("k", slow_fetcher(calls, "t", std::chrono::seconds(60))); },
      asio::detached);
  ctx.run();
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(cache.peek("k"), "t");
}

TEST(TokenCache, ScopesAreCachedSeparately) {
  token_cache cache;
  std::atomic<int> calls{0};
  run([&]() -> asio::awaitable<void> {
    co_await cache.get("a", slow_fetcher(calls, "ta", std::chrono::seconds(60)));
    co_await cache.get("b", slow_fetcher(calls, "tb", std::chrono::seconds(60)));
    co_await cache.get("a", slow_fetcher(calls, "ta2", std::chrono::seconds(60)));
  });
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(cache.peek("a"), "ta");
  EXPECT_EQ(cache.peek("b"), "tb");
}

TEST(TokenCache, InvalidateDropsOnlyThatToken) {
  token_cache cache;
  std::atomic<int> calls{0};
  run([&]() -> asio::awaitable<void> { co_await cache.get("a", slow_fetcher(calls, "t1", std::chrono::seconds(60))); });
  cache.invalidate("a", "some-older-token");
  EXPECT_EQ(cache.peek("a"), "t1");
  cache.invalidate("a", "t1");
  EXPECT_EQ(cache.peek("a"), "");
}

TEST(TokenCache, ExpiryHonoursExpiresInMinusAMargin) {
  EXPECT_EQ(token_cache::margin_for(std::chrono::seconds(60)), std::chrono::seconds(12));
  EXPECT_EQ(token_cache::margin_for(std::chrono::seconds(1800)), std::chrono::seconds(30));
  token_cache cache;
  std::atomic<int> calls{0};
  // expires_in 1 s: usable for 0.8 s, then fetched again.
  run([&]() -> asio::awaitable<void> {
    co_await cache.get("a", slow_fetcher(calls, "t1", std::chrono::seconds(1)));
    co_await cache.get("a", slow_fetcher(calls, "t2", std::chrono::seconds(1)));
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(900));
    co_await t.async_wait(asio::use_awaitable);
    co_await cache.get("a", slow_fetcher(calls, "t3", std::chrono::seconds(1)));
  });
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(cache.peek("a"), "t3");
}

TEST(TokenCache, MissingExpiresInMeansSixtySeconds) {
  token_cache cache;
  std::atomic<int> calls{0};
  run([&]() -> asio::awaitable<void> { co_await cache.get("a", slow_fetcher(calls, "t1", std::chrono::seconds(0))); });
  EXPECT_EQ(cache.peek("a"), "t1");  // not expired at once: default 60 s
}

TEST(TokenResponse, ReadsTheSpecsFieldsAndSurvivesHostileNumbers) {
  auto t = parse_token_response(R"({"token":"abc","expires_in":300})");
  EXPECT_TRUE(t.ok());
  EXPECT_EQ(t.expires_in, std::chrono::seconds(300));
  t = parse_token_response(R"({"access_token":"xyz"})");
  EXPECT_EQ(t.token, "xyz");
  EXPECT_EQ(t.expires_in.count(), 0) << "absent: the default";
  for (const char* odd : {R"({"token":"a","expires_in":1e300})", R"({"token":"a","expires_in":-1e300})",
                          R"({"token":"a","expires_in":-5})", R"({"token":"a","expires_in":0.5})",
                          R"({"token":"a","expires_in":18446744073709551615})"}) {
    t = parse_token_response(odd);
    EXPECT_TRUE(t.ok()) << odd;
    EXPECT_GE(t.expires_in.count(), 0) << odd;
    EXPECT_LE(t.expires_in.count(), 24 * 3600) << odd;
  }
  for (const char* bad : {"", "[]", "null", R"({"token":""})", R"({"token":7})", "<html>"}) {
    t = parse_token_response(bad);
    EXPECT_FALSE(t.ok()) << bad;
    EXPECT_FALSE(t.error.empty()) << bad;
  }
}
