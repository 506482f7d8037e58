// The manifest metadata cache: tiers, freshness, stale-if-error, single flight in
// a process and across "nodes" (cache instances sharing one real redis-server),
// invalidation, corruption, and the persistent local copy.
#include "meta/cache.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <filesystem>
#include <thread>

#include "core/hasher.hpp"
#include "meta/local_db.hpp"
#include "meta/redis.hpp"
#include "metrics/metrics.hpp"
#include "redis_server.hpp"

using namespace berth;
namespace asio = boost::asio;
using namespace std::chrono_literals;
using berth::testing::free_port;
using berth::testing::redis_server;

namespace {

const std::string k_index_type = "application/vnd.oci.image.index.v1+json";
const std::string k_manifest =
    R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]})";
const std::string k_digest = core::digest_of(k_manifest);
const std::string k_other = "sha256:" + std::string(64, 'b');

// A stand-in for the mirror's upstream request: counts calls, answers `result`
// after `delay`, with `digest` when it succeeds.
struct upstream_script {
  std::atomic<int> calls{0};
  std::atomic<meta::fetched::result> result{meta::fetched::result::ok};
  std::string digest = k_digest;
  std::chrono::milliseconds delay{0};

  meta::fetch_fn fn() {
    return [this](const std::optional<meta::entry>&) -> asio::awaitable<meta::fetched> {
      ++calls;
      if (delay.count() > 0) {
        asio::steady_timer t(co_await asio::this_coro::executor, delay);
        co_await t.async_wait(asio::use_awaitable);
      }
      meta::fetched f;
      f.status = result;
      if (f.status == meta::fetched::result::ok) {
        f.answer.digest = digest;
        f.answer.size = k_manifest.size();
        f.answer.media_type = k_index_type;
      } else {
        const unsigned status = f.status == meta::fetched::result::not_found ? 404
                                : f.status == meta::fetched::result::refused ? 412
                                                                             : 503;
        f.reply = core::error_reply({status, "TEST", "scripted"});
      }
      co_return f;
    };
  }
};

meta::metadata_options options() {
  meta::metadata_options o;
  o.tag_ttl = 60s;
  o.max_stale = 1h;
  o.negative_ttl = 10s;
  o.lock_timeout = 3s;
  o.key_prefix = "berth-test:";
  return o;
}

const meta::key k_tag = meta::key::tag("registry.test", "library/app", "v1", 31);

// An io_context for the calling thread that is never destroyed: the client's and
// the cache's threads may still post a wake-up to it after the awaiting coroutine
// gave up (as in production, where the worker contexts live as long as the process).
inline boost::asio::io_context& lasting_context() {
  thread_local auto* ctx = new boost::asio::io_context(1);
  ctx->restart();
  return *ctx;
}

meta::lookup resolve(meta::cache& c, const meta::fetch_fn& f, std::chrono::milliseconds ttl = 60s,
                     const meta::key& k = k_tag) {
  auto& ctx = lasting_context();
  meta::lookup out;
  asio::co_spawn(
      ctx, [&]() -> asio::awaitable<void> { out = co_await c.resolve(k, ttl, "registry.test", "tag", f); },
      asio::detached);
  ctx.run();
  return out;
}

template <class T>
T run(std::function<asio::awaitable<T>()> body) {
  auto& ctx = lasting_context();
  T out{};
  asio::co_spawn(
      ctx, [&]() -> asio::awaitable<void> { out = co_await body(); }, asio::detached);
  ctx.run();
  return out;
}

std::shared_ptr<meta::redis_client> backend(int port, metrics::registry& m) {
  meta::redis_options o;
  o.port = port;
  o.command_timeout = 500ms;
  o.connect_timeout = 500ms;
  return std::make_shared<meta::redis_client>(o, m);
}

// Two "nodes": cache instances with their own metrics, sharing one backend.
struct two_nodes {
  metrics::registry m1, m2;
  meta::cache a, b;
  explicit two_nodes(int port)
      : a(options(), m1, backend(port, m1), nullptr), b(options(), m2, backend(port, m2), nullptr) {}
};

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 3s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

}  // namespace

TEST(MetaEntry, EncodesAndRejectsGarbage) {
  meta::entry e{1700000000123, true, k_digest, 42, k_index_type};
  auto back = meta::decode(meta::encode(e));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->validated_ms, e.validated_ms);
  EXPECT_EQ(back->digest, e.digest);
  EXPECT_EQ(back->size, 42u);
  EXPECT_EQ(back->media_type, k_index_type);
  meta::entry negative{5, false, "", 0, ""};
  auto n = meta::decode(meta::encode(negative));
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->found);
  for (const char* bad :
       {"", "v1", "v2 1 1 1 sha256:x type", "v1 x 1 1 d t", "v1 1 2 1 d t", "v1 1 1 1 - -", "v1 1 1 1 d t extra"}) {
    EXPECT_FALSE(meta::decode(bad)) << bad;
  }
}

TEST(MetaOptions, TagPatternsPickTheTtl) {
  EXPECT_TRUE(meta::glob_match("v*.*.*", "v1.2.3"));
  EXPECT_FALSE(meta::glob_match("v*.*.*", "v1.2"));
  EXPECT_TRUE(meta::glob_match("*", ""));
  EXPECT_TRUE(meta::glob_match("release-??", "release-10"));
  EXPECT_FALSE(meta::glob_match("release-??", "release-100"));
  auto o = options();
  o.tag_ttl_overrides = {{"v*.*.*", 10min}, {"latest", 0ms}};
  EXPECT_EQ(o.ttl_for("v1.2.3"), 10min);
  EXPECT_EQ(o.ttl_for("latest"), 0ms);
  EXPECT_EQ(o.ttl_for("main"), 60s);
}

TEST(MetaCache, AnswersFromMemoryUntilTheTtlRunsOut) {
  metrics::registry m;
  meta::cache c(options(), m, nullptr, nullptr);
  upstream_script up;
  auto f = up.fn();
  auto first = resolve(c, f);
  EXPECT_EQ(first.how, meta::outcome::upstream);
  ASSERT_TRUE(first.answer);
  EXPECT_EQ(first.answer->digest, k_digest);
  auto second = resolve(c, f);
  EXPECT_EQ(second.how, meta::outcome::fresh_hit);
  EXPECT_EQ(up.calls, 1);
  // A TTL of zero: every lookup asks the upstream (Harbor's policy re-checked each time).
  EXPECT_EQ(resolve(c, f, 0ms).how, meta::outcome::upstream);
  EXPECT_EQ(up.calls, 2);
  EXPECT_NE(
      m.serialize().find(R"(berth_metadata_lookups_total{kind="tag",outcome="fresh_hit",registry="registry.test"} 1)"),
      std::string::npos);
}

TEST(MetaCache, StaleIfErrorButNeverOverA404) {
  metrics::registry m;
  meta::cache c(options(), m, nullptr, nullptr);
  upstream_script up;
  auto f = up.fn();
  ASSERT_EQ(resolve(c, f).how, meta::outcome::upstream);
  up.result = meta::fetched::result::unavailable;
  auto stale = resolve(c, f, 0ms);
  EXPECT_EQ(stale.how, meta::outcome::stale);
  ASSERT_TRUE(stale.answer);
  EXPECT_EQ(stale.answer->digest, k_digest);

  up.result = meta::fetched::result::not_found;
  auto gone = resolve(c, f, 0ms);
  EXPECT_FALSE(gone.answer);
  EXPECT_EQ(gone.reply.status, 404u);
  // Remembered for negative_ttl, without asking again.
  const int calls = up.calls;
  auto remembered = resolve(c, f, 0ms);
  EXPECT_EQ(remembered.how, meta::outcome::negative);
  ASSERT_TRUE(remembered.answer);
  EXPECT_FALSE(remembered.answer->found);
  EXPECT_EQ(up.calls, calls);
  // The upstream going down after a 404 does not bring the old digest back.
  auto o = options();
  o.negative_ttl = 0ms;
  meta::cache c2(o, m, nullptr, nullptr);
  up.result = meta::fetched::result::ok;
  resolve(c2, f);
  up.result = meta::fetched::result::not_found;
  resolve(c2, f, 0ms);
  up.result = meta::fetched::result::unavailable;
  auto after = resolve(c2, f, 0ms);
  EXPECT_FALSE(after.answer);
  EXPECT_EQ(after.reply.status, 503u);
}

TEST(MetaCache, ARefusalDropsTheAnswer) {
  metrics::registry m;
  meta::cache c(options(), m, nullptr, nullptr);
  upstream_script up;
  auto f = up.fn();
  resolve(c, f);
  up.result = meta::fetched::result::refused;
  auto blocked = resolve(c, f, 0ms);
  EXPECT_EQ(blocked.how, meta::outcome::refused);
  EXPECT_EQ(blocked.reply.status, 412u);
  // Dropped: an outage now has nothing stale to serve.
  up.result = meta::fetched::result::unavailable;
  EXPECT_FALSE(resolve(c, f, 0ms).answer);
}

TEST(MetaCache, MaxStaleBoundsStaleAnswers) {
  metrics::registry m;
  auto o = options();
  o.max_stale = 0ms;
  meta::cache c(o, m, nullptr, nullptr);
  upstream_script up;
  auto f = up.fn();
  resolve(c, f);
  up.result = meta::fetched::result::unavailable;
  EXPECT_FALSE(resolve(c, f, 0ms).answer);
}

TEST(MetaCache, ConcurrentLookupsInOneProcessAskOnce) {
  metrics::registry m;
  meta::cache c(options(), m, nullptr, nullptr);
  upstream_script up;
  up.delay = 100ms;
  auto f = up.fn();
  std::atomic<int> answered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      auto& ctx = lasting_context();
      for (int i = 0; i < 25; ++i) {
        asio::co_spawn(
            ctx,
            [&]() -> asio::awaitable<void> {
              auto l = co_await c.resolve(k_tag, 60s, "registry.test", "tag", f);
              if (l.answer && l.answer->digest == k_digest) ++answered;
            },
            asio::detached);
      }
      ctx.run();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(up.calls, 1);
  EXPECT_EQ(answered, 50);
}

TEST(MetaCache, ALocalCopyAttachedLaterServesItsAnswersButNotOnesInvalidatedMeanwhile) {
  // A successor runs without the local copy while its predecessor drains, then
  // attaches it: what it holds is served, unless a webhook dropped it in between.
  const auto dir = std::filesystem::temp_directory_path() / ("berth-meta-attach-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  metrics::registry m;
  upstream_script up;
  auto f = up.fn();
  const meta::key other = meta::key::tag("registry.test", "library/other", "v1", 31);
  {
    meta::cache c(options(), m, nullptr, meta::local_db::open(dir.string()));
    c.start();
    resolve(c, f);
    resolve(c, f, 60s, other);
  }
  ASSERT_EQ(up.calls, 2);
  meta::cache c(options(), m, nullptr, nullptr);
  c.start();
  const std::vector<std::string> groups{k_tag.group};
  run<bool>([&]() -> asio::awaitable<bool> { co_return co_await c.invalidate(groups); });
  c.attach_local(meta::local_db::open(dir.string()));
  EXPECT_EQ(resolve(c, f, 60s, other).how, meta::outcome::fresh_hit) << "the attached copy serves";
  EXPECT_EQ(up.calls, 2);
  EXPECT_EQ(resolve(c, f).how, meta::outcome::upstream) << "invalidated before the copy was attached";
  EXPECT_EQ(up.calls, 3);
}

TEST(MetaCache, PersistsAcrossRestartsInTheLocalStore) {
  const auto dir = std::filesystem::temp_directory_path() / ("berth-meta-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  metrics::registry m;
  upstream_script up;
  auto f = up.fn();
  {
    meta::cache c(options(), m, nullptr, meta::local_db::open(dir.string()));
    c.start();
    resolve(c, f);
    run<bool>([&]() -> asio::awaitable<bool> {
      const meta::manifest mf{k_index_type, k_manifest};
      co_await c.put_manifest(k_digest, mf);
      co_return true;
    });
  }
  {
    meta::cache c(options(), m, nullptr, meta::local_db::open(dir.string()));
    c.start();
    EXPECT_EQ(resolve(c, f).how, meta::outcome::fresh_hit);
    EXPECT_EQ(up.calls, 1);
    auto got = run<std::optional<meta::manifest>>([&] { return c.get_manifest(k_digest); });
    ASSERT_TRUE(got);
    EXPECT_EQ(got->bytes, k_manifest);
    EXPECT_EQ(got->media_type, k_index_type);
  }
  // A tampered local copy is dropped, not served.
  {
    auto db = meta::local_db::open(dir.string());
    db->put("m:" + k_digest, k_index_type + "\n" + k_manifest + " ");
  }
  {
    meta::cache c(options(), m, nullptr, meta::local_db::open(dir.string()));
    EXPECT_FALSE(run<std::optional<meta::manifest>>([&] { return c.get_manifest(k_digest); }));
    EXPECT_NE(m.serialize().find(R"(berth_metadata_corrupt_total{tier="local"} 1)"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

TEST(MetaCacheShared, ASecondNodeUsesTheFirstNodesAnswer) {
  const int port = free_port();
  redis_server server(port);
  two_nodes n(port);
  auto& a = n.a;
  auto& b = n.b;
  upstream_script up;
  auto f = up.fn();
  EXPECT_EQ(resolve(a, f).how, meta::outcome::upstream);
  EXPECT_EQ(resolve(b, f).how, meta::outcome::shared_hit);
  EXPECT_EQ(resolve(b, f).how, meta::outcome::fresh_hit);
  EXPECT_EQ(up.calls, 1);
}

TEST(MetaCacheShared, NodesMissingAtOnceAskTheUpstreamOnce) {
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  std::vector<std::unique_ptr<meta::cache>> nodes;
  for (int i = 0; i < 5; ++i) nodes.push_back(std::make_unique<meta::cache>(options(), m, backend(port, m), nullptr));
  upstream_script up;
  up.delay = 300ms;
  auto f = up.fn();
  std::vector<std::thread> threads;
  std::atomic<int> coalesced{0}, answered{0};
  for (auto& n : nodes) {
    threads.emplace_back([&, node = n.get()] {
      auto l = resolve(*node, f);
      if (l.answer && l.answer->digest == k_digest) ++answered;
      if (l.how == meta::outcome::coalesced) ++coalesced;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(up.calls, 1);
  EXPECT_EQ(answered, 5);
  EXPECT_EQ(coalesced, 4);
}

TEST(MetaCacheShared, ALockHolderThatDiesIsReplacedAfterTheLockExpires) {
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  auto o = options();
  o.lock_timeout = 400ms;
  meta::cache c(o, m, backend(port, m), nullptr);
  // A node took the lock and died: nobody deletes it.
  auto raw = backend(port, m);
  run<bool>([&]() -> asio::awaitable<bool> {
    std::vector<std::string> set{"SET", o.key_prefix + "lock:" + k_tag.flat(), "dead-node", "PX", "400"};
    co_return static_cast<bool>(co_await raw->command(std::move(set)));
  });
  upstream_script up;
  auto f = up.fn();
  const auto started = std::chrono::steady_clock::now();
  auto l = resolve(c, f);
  EXPECT_TRUE(l.answer);
  EXPECT_EQ(up.calls, 1);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 300ms);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 3s);
}

TEST(MetaCacheShared, AnAbandonedLockCostsAtMostLockWait) {
  // What a paused Dragonfly leaves behind: a SET NX that Berth gave up on was applied
  // when the server resumed, and its lock lives for the whole lock_timeout with
  // nobody working under it. A request waits lock_wait for it, then asks itself.
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  auto o = options();
  o.lock_timeout = 30s;
  o.lock_wait = 500ms;
  meta::cache c(o, m, backend(port, m), nullptr);
  auto raw = backend(port, m);
  run<bool>([&]() -> asio::awaitable<bool> {
    std::vector<std::string> set{"SET", o.key_prefix + "lock:" + k_tag.flat(), "abandoned", "PX", "30000"};
    co_return static_cast<bool>(co_await raw->command(std::move(set)));
  });
  upstream_script up;
  auto f = up.fn();
  const auto started = std::chrono::steady_clock::now();
  auto l = resolve(c, f);
  const auto took = std::chrono::steady_clock::now() - started;
  ASSERT_TRUE(l.answer);
  EXPECT_EQ(l.answer->digest, k_digest);
  EXPECT_EQ(up.calls, 1);
  EXPECT_GE(took, 450ms);
  EXPECT_LT(took, 2s) << "waited on a lock nobody works under";
  // Its answer is in the backend now: a second node needs neither the lock nor the upstream.
  metrics::registry m2;
  meta::cache other(o, m2, backend(port, m2), nullptr);
  const auto again = std::chrono::steady_clock::now();
  auto l2 = resolve(other, f);
  ASSERT_TRUE(l2.answer);
  EXPECT_EQ(up.calls, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - again, 400ms);
}

TEST(MetaCacheShared, CorruptSharedManifestIsDroppedNotServed) {
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  auto raw = backend(port, m);
  meta::cache c(options(), m, raw, nullptr);
  run<bool>([&]() -> asio::awaitable<bool> {
    std::vector<std::string> set{"SET", "berth-test:manifest:" + k_digest, k_index_type + "\n" + k_manifest + "x"};
    co_return static_cast<bool>(co_await raw->command(std::move(set)));
  });
  EXPECT_FALSE(run<std::optional<meta::manifest>>([&] { return c.get_manifest(k_digest); }));
  EXPECT_NE(m.serialize().find(R"(berth_metadata_corrupt_total{tier="shared"} 1)"), std::string::npos);
  // Dropped from the backend too.
  auto left = run<std::optional<meta::reply>>([&]() -> asio::awaitable<std::optional<meta::reply>> {
    std::vector<std::string> get{"EXISTS", "berth-test:manifest:" + k_digest};
    co_return co_await raw->command(std::move(get));
  });
  ASSERT_TRUE(left);
  EXPECT_EQ(left->integer, 0);
  // A right copy put back is served, and a media type that contradicts the bytes is not.
  run<bool>([&]() -> asio::awaitable<bool> {
    const meta::manifest mf{k_index_type, k_manifest};
    co_await c.put_manifest(k_digest, mf);
    co_return true;
  });
  meta::cache fresh(options(), m, raw, nullptr);
  EXPECT_TRUE(run<std::optional<meta::manifest>>([&] { return fresh.get_manifest(k_digest); }));
  run<bool>([&]() -> asio::awaitable<bool> {
    std::vector<std::string> set{"SET", "berth-test:manifest:" + k_digest,
                                 "application/vnd.docker.distribution.manifest.v2+json\n" + k_manifest};
    co_return static_cast<bool>(co_await raw->command(std::move(set)));
  });
  meta::cache third(options(), m, raw, nullptr);
  EXPECT_FALSE(run<std::optional<meta::manifest>>([&] { return third.get_manifest(k_digest); }));
}

TEST(MetaCacheShared, InvalidationReachesEveryNode) {
  const int port = free_port();
  redis_server server(port);
  two_nodes n(port);
  auto& a = n.a;
  auto& b = n.b;
  auto& m2 = n.m2;
  a.start();
  b.start();
  ASSERT_TRUE(eventually([&] { return m2.serialize().find("berth_metadata_backend_up 1") != std::string::npos; }));
  upstream_script up;
  auto f = up.fn();
  resolve(a, f);
  EXPECT_EQ(resolve(b, f).how, meta::outcome::shared_hit);
  EXPECT_EQ(resolve(b, f).how, meta::outcome::fresh_hit);
  // The tag moves; a's webhook tells everyone.
  up.digest = k_other;
  EXPECT_TRUE(run<bool>([&]() -> asio::awaitable<bool> {
    const std::vector<std::string> groups{k_tag.group};
    co_return co_await a.invalidate(groups);
  }));
  ASSERT_TRUE(eventually([&] {
    return m2.serialize().find(R"(berth_metadata_invalidations_total{source="peer"} 1)") != std::string::npos;
  }));
  auto l = resolve(b, f);
  EXPECT_EQ(l.how, meta::outcome::upstream);
  ASSERT_TRUE(l.answer);
  EXPECT_EQ(l.answer->digest, k_other);
  EXPECT_EQ(resolve(a, f).answer->digest, k_other);
}

TEST(MetaCacheShared, BackendDownMeansLocalTiersThenUpstream) {
  const int port = free_port();
  auto server = std::make_unique<redis_server>(port);
  metrics::registry m;
  meta::cache c(options(), m, backend(port, m), nullptr);
  c.start();
  upstream_script up;
  auto f = up.fn();
  resolve(c, f);
  server.reset();  // killed
  EXPECT_EQ(resolve(c, f).how, meta::outcome::fresh_hit);
  const auto started = std::chrono::steady_clock::now();
  auto l = resolve(c, f, 0ms);
  EXPECT_EQ(l.how, meta::outcome::upstream);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  ASSERT_TRUE(eventually([&] { return m.serialize().find("berth_metadata_backend_up 0") != std::string::npos; }));
  server = std::make_unique<redis_server>(port);
  ASSERT_TRUE(eventually([&] { return m.serialize().find("berth_metadata_backend_up 1") != std::string::npos; }, 10s));
  EXPECT_TRUE(resolve(c, f).answer);
}

TEST(MetaCacheShared, AStalledBackendCostsOneTimeoutThenFailsFast) {
  // Counted, not timed: each command that met the stall ends as "error" (it waited
  // out command_timeout), each one refused while backing off as "down" (it waited
  // for nothing). The backoff outlasts the test, so exactly one command may wait.
  const int port = free_port();
  redis_server server(port);
  metrics::registry m;
  meta::redis_options o;
  o.port = port;
  o.command_timeout = 500ms;
  o.retry_backoff = 30s;
  meta::cache c(options(), m, std::make_shared<meta::redis_client>(o, m), nullptr);
  upstream_script up;
  auto f = up.fn();
  resolve(c, f);
  server.pause();                          // SIGSTOP: connections stay open, nothing answers
  EXPECT_TRUE(resolve(c, f, 0ms).answer);  // pays the command timeout, once
  const auto after_first = m.serialize();
  EXPECT_EQ(berth::testing::backend_commands(after_first, "error"), 1) << after_first;
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(resolve(c, f, 0ms).answer);
  const auto after_all = m.serialize();
  EXPECT_EQ(berth::testing::backend_commands(after_all, "error"), 1) << "no more waiting on it\n" << after_all;
  EXPECT_GE(berth::testing::backend_commands(after_all, "down"), 5) << after_all;
  EXPECT_EQ(up.calls, 7);  // every resolve went upstream: the tag TTL is 0
  server.resume();
}

TEST(MetaCache, ATtlRunsOutWhenItSaysAndNotBefore) {
  // A TTL of a few hundred milliseconds, so that a unit mix-up (ms read as s, or the
  // reverse) shows: fresh well inside it, asked again just after it.
  metrics::registry m;
  meta::cache c(options(), m, nullptr, nullptr);
  upstream_script up;
  auto f = up.fn();
  resolve(c, f, 400ms);
  EXPECT_EQ(resolve(c, f, 400ms).how, meta::outcome::fresh_hit);
  EXPECT_EQ(up.calls, 1);
  std::this_thread::sleep_for(450ms);
  EXPECT_EQ(resolve(c, f, 400ms).how, meta::outcome::upstream) << "the TTL ran out";
  EXPECT_EQ(up.calls, 2);
}

TEST(MetaCache, StaleAnswersEndAtMaxStale) {
  metrics::registry m;
  auto o = options();
  o.max_stale = 400ms;
  meta::cache c(o, m, nullptr, nullptr);
  upstream_script up;
  auto f = up.fn();
  resolve(c, f, 0ms);
  up.result = meta::fetched::result::unavailable;
  auto within = resolve(c, f, 0ms);
  EXPECT_EQ(within.how, meta::outcome::stale) << "inside max_stale: the last answer";
  std::this_thread::sleep_for(450ms);
  auto past = resolve(c, f, 0ms);
  EXPECT_FALSE(past.answer) << "past max_stale: the upstream's error";
  EXPECT_EQ(past.reply.status, 503u);
}
