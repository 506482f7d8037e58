// The metadata backend client against a real redis-server on a loopback port
// chosen at run time (started and stopped by the fixture, also on failure).
#include "meta/redis.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <thread>

#include "metrics/metrics.hpp"
#include "redis_server.hpp"

using namespace berth;
using berth::testing::free_port;
using berth::testing::redis_server;
namespace asio = boost::asio;
using std::chrono::steady_clock;

namespace {

// An io_context for the calling thread that is never destroyed: the client's and
// the cache's threads may still post a wake-up to it after the awaiting coroutine
// gave up (as in production, where the worker contexts live as long as the process).
inline boost::asio::io_context& lasting_context() {
  thread_local auto* ctx = new boost::asio::io_context(1);
  ctx->restart();
  return *ctx;
}

// Runs one command and returns its answer.
std::optional<meta::reply> run(meta::redis_client& c, std::vector<std::string> argv) {
  auto& ctx = lasting_context();
  std::optional<meta::reply> out;
  asio::co_spawn(
      ctx, [&]() -> asio::awaitable<void> { out = co_await c.command(std::move(argv)); }, asio::detached);
  ctx.run();
  return out;
}

meta::redis_options options(int port) {
  meta::redis_options o;
  o.port = port;
  o.command_timeout = std::chrono::milliseconds(300);
  o.connect_timeout = std::chrono::milliseconds(300);
  return o;
}

}  // namespace

TEST(Redis, CommandsAndReplies) {
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  meta::redis_client c(options(port), m);
  auto r = run(c, {"SET", "berth:test:a", "value with spaces\n"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, meta::reply::kind::status);
  EXPECT_TRUE(c.up());
  r = run(c, {"GET", "berth:test:a"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str, "value with spaces\n");
  // The cluster-wide lock primitive: SET NX with an expiry.
  EXPECT_EQ(run(c, {"SET", "berth:lock", "node1", "NX", "PX", "5000"})->type, meta::reply::kind::status);
  EXPECT_EQ(run(c, {"SET", "berth:lock", "node2", "NX", "PX", "5000"})->type, meta::reply::kind::nil);
  EXPECT_EQ(run(c, {"INCR", "berth:n"})->integer, 1);
  auto arr = run(c, {"MGET", "berth:test:a", "berth:missing"});
  ASSERT_TRUE(arr);
  ASSERT_EQ(arr->elements.size(), 2u);
  EXPECT_EQ(arr->elements[1].type, meta::reply::kind::nil);
  auto err = run(c, {"NOSUCHCOMMAND"});
  ASSERT_TRUE(err);
  EXPECT_FALSE(err->ok());
  EXPECT_NE(m.serialize().find("berth_metadata_backend_up 1"), std::string::npos);
}

TEST(Redis, PasswordsAndDatabases) {
  const int port = free_port();
  redis_server server(port, "test-only-password");
  metrics::registry m;
  auto o = options(port);
  o.password = "wrong-password";
  {
    meta::redis_client bad(o, m);
    EXPECT_FALSE(run(bad, {"PING"}));
    EXPECT_FALSE(bad.up());
  }
  o.password = "test-only-password";
  o.db = 3;
  meta::redis_client good(o, m);
  ASSERT_TRUE(run(good, {"SET", "k", "in-db-3"}));
  o.db = 0;
  meta::redis_client db0(o, m);
  EXPECT_EQ(run(db0, {"GET", "k"})->type, meta::reply::kind::nil);
}

TEST(Redis, DownFailsFastAndRecovers) {
  const int port = free_port();
  auto server = std::make_unique<redis_server>(port);
  metrics::registry m;
  meta::redis_client c(options(port), m);
  ASSERT_TRUE(run(c, {"PING"}));
  server->stop();
  auto t0 = steady_clock::now();
  EXPECT_FALSE(run(c, {"PING"}));
  EXPECT_FALSE(run(c, {"PING"}));
  EXPECT_LT(steady_clock::now() - t0, std::chrono::seconds(2));  // never a hang
  EXPECT_FALSE(c.up());
  EXPECT_NE(m.serialize().find("berth_metadata_backend_up 0"), std::string::npos);
  server = std::make_unique<redis_server>(port);
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {  // reconnects after its backoff
    back = run(c, {"PING"}).has_value();
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(back);
  EXPECT_TRUE(c.up());
}

TEST(Redis, AStalledBackendTimesOut) {
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  meta::redis_client c(options(port), m);
  ASSERT_TRUE(run(c, {"PING"}));
  server.pause();
  const auto t0 = steady_clock::now();
  EXPECT_FALSE(run(c, {"PING"}));
  EXPECT_LT(steady_clock::now() - t0, std::chrono::seconds(2));
  server.resume();
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {
    back = run(c, {"PING"}).has_value();
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(back);
}

TEST(Redis, AStallOnOneConnectionMakesEveryConnectionFailFast) {
  // Two connections; the first command to meet the stall pays the timeout. The
  // others, on either connection, must fail at once while the client backs off:
  // the second connection is still open, but a stalled backend stalls it too.
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  auto o = options(port);
  o.connections = 2;
  o.retry_backoff = std::chrono::seconds(5);  // nothing below outlasts it
  meta::redis_client c(o, m);
  ASSERT_TRUE(run(c, {"PING"}));
  ASSERT_TRUE(run(c, {"PING"}));
  server.pause();
  EXPECT_FALSE(run(c, {"PING"}));
  for (int i = 0; i < 6; ++i) EXPECT_FALSE(run(c, {"PING"}));
  server.resume();
  const auto text = m.serialize();
  EXPECT_EQ(berth::testing::backend_commands(text, "error"), 1) << text;
  EXPECT_EQ(berth::testing::backend_commands(text, "down"), 6) << text;
}

TEST(Redis, PipelinedCommandsAnswerInOrder) {
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  meta::redis_client c(options(port), m);
  auto& ctx = lasting_context();
  std::optional<std::vector<meta::reply>> out;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        std::vector<std::vector<std::string>> batch{
            {"SET", "berth:p", "1"}, {"NOSUCHCOMMAND"}, {"INCR", "berth:p"}, {"GET", "berth:p"}};
        out = co_await c.pipeline(std::move(batch));
      },
      asio::detached);
  ctx.run();
  ASSERT_TRUE(out);
  ASSERT_EQ(out->size(), 4u);
  EXPECT_EQ((*out)[0].type, meta::reply::kind::status);
  EXPECT_FALSE((*out)[1].ok());  // an error reply is an answer; the rest still run
  EXPECT_EQ((*out)[2].integer, 2);
  EXPECT_EQ((*out)[3].str, "2");
}

TEST(Redis, ParsesUrls) {
  std::string err;
  auto o = meta::parse_redis_url("redis://harbor-redis.harbor.svc:6380/2", err);
  ASSERT_TRUE(o) << err;
  EXPECT_EQ(o->host, "harbor-redis.harbor.svc");
  EXPECT_EQ(o->port, 6380);
  EXPECT_EQ(o->db, 2);
  o = meta::parse_redis_url("redis://berth:s3cret@127.0.0.1", err);
  ASSERT_TRUE(o) << err;
  EXPECT_EQ(o->username, "berth");
  EXPECT_EQ(o->password, "s3cret");
  EXPECT_EQ(o->port, 6379);
  EXPECT_FALSE(meta::parse_redis_url("rediss://x", err));
  EXPECT_NE(err.find("TLS"), std::string::npos);
  EXPECT_FALSE(meta::parse_redis_url("http://x", err));
  EXPECT_FALSE(meta::parse_redis_url("redis://x/db", err));
}
