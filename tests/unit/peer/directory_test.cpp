// The blob directory's re-announcements, against a real redis-server on a loopback
// port chosen at run time: what a node holds is listed again after the backend lost it
// (restarted empty, flushed) and periodically, and only once the cache can say what it
// holds.
#include "peer/directory.hpp"

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include "../meta/redis_server.hpp"
#include "meta/redis.hpp"
#include "metrics/metrics.hpp"

using namespace berth;
using berth::testing::free_port;
using berth::testing::redis_server;
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

const std::string k_a = "sha256:" + std::string(64, 'a');
const std::string k_b = "sha256:" + std::string(64, 'b');

meta::redis_options backend_options(int port) {
  meta::redis_options o;
  o.port = port;
  o.command_timeout = 300ms;
  o.connect_timeout = 300ms;
  o.retry_backoff = 50ms;
  return o;
}

// A client of the test's own, to look at (and damage) what the directory wrote.
class inspector {
 public:
  explicit inspector(int port) : client_(backend_options(port), metrics_) {}
  std::optional<meta::reply> run(std::vector<std::string> argv) {
    std::optional<meta::reply> out;
    asio::co_spawn(
        io_, [&]() -> asio::awaitable<void> { out = co_await client_.command(std::move(argv)); }, asio::detached);
    io_.restart();
    io_.run();
    return out;
  }
  std::set<std::string> members(const std::string& key) {
    std::set<std::string> out;
    if (auto r = run({"SMEMBERS", key})) {
      for (const auto& e : r->elements) out.insert(e.str);
    }
    return out;
  }

 private:
  metrics::registry metrics_;
  asio::io_context io_{1};
  meta::redis_client client_;
};

template <class F>
bool eventually(F&& done, std::chrono::milliseconds limit = 5s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

// How many blob announcements the directory has sent, from its own metrics.
long announced(const metrics::registry& m) {
  const std::string key = R"(berth_peer_directory_operations_total{op="announce",result="ok"} )";
  const auto text = m.serialize();
  const auto at = text.find(key);
  return at == std::string::npos ? 0 : std::stol(text.substr(at + key.size()));
}

struct node {
  explicit node(int port, std::chrono::milliseconds reannounce = 1h) {
    metrics.peers_configured();
    backend = std::make_shared<meta::redis_client>(backend_options(port), metrics);
    peer::directory::options o;
    o.prefix = "t:";
    o.self = "127.0.0.10:5051";
    o.heartbeat = 100ms;
    o.reannounce = reannounce;
    dir = std::make_unique<peer::directory>(backend, o, metrics);
  }
  metrics::registry metrics;
  std::shared_ptr<meta::redis_client> backend;
  std::unique_ptr<peer::directory> dir;
};

}  // namespace

TEST(PeerDirectory, AnnouncesWhatItHoldsAgainWhenTheBackendRestartsEmpty) {
  const int port = free_port();
  redis_server server(port);
  inspector look(port);
  node n(port);
  n.dir->set_holdings([] { return std::vector<std::string>{k_a, k_b}; });
  n.dir->start();
  // A node the backend does not know yet announces what it holds.
  ASSERT_TRUE(eventually([&] { return look.members("t:blob:" + k_b).count("127.0.0.10:5051") == 1; }));
  EXPECT_EQ(look.members("t:blob:" + k_a), std::set<std::string>{"127.0.0.10:5051"});
  // While the backend remembers the node, heartbeats announce nothing more.
  const long first = announced(n.metrics);
  std::this_thread::sleep_for(600ms);  // six beats
  EXPECT_EQ(announced(n.metrics), first);

  // Dragonfly restarted without its data: the node lists its blobs again.
  server.stop();
  std::this_thread::sleep_for(300ms);
  server.start();
  EXPECT_TRUE(look.members("t:blob:" + k_a).empty());
  EXPECT_TRUE(eventually([&] {
    return look.members("t:blob:" + k_a).count("127.0.0.10:5051") == 1 &&
           look.members("t:blob:" + k_b).count("127.0.0.10:5051") == 1;
  }));
  // ... with the holder expiry set.
  const auto ttl = look.run({"PTTL", "t:blob:" + k_a});
  ASSERT_TRUE(ttl);
  EXPECT_GT(ttl->integer, 3600 * 1000);
  n.dir->stop();
}

TEST(PeerDirectory, AFlushedBackendIsNoticedByTheNextHeartbeat) {
  const int port = free_port();
  redis_server server(port);
  inspector look(port);
  node n(port);
  n.dir->set_holdings([] { return std::vector<std::string>{k_a}; });
  n.dir->start();
  ASSERT_TRUE(eventually([&] { return !look.members("t:blob:" + k_a).empty(); }));
  ASSERT_TRUE(look.run({"FLUSHALL"}));
  EXPECT_TRUE(eventually([&] { return !look.members("t:blob:" + k_a).empty(); }, 2s));
  n.dir->stop();
}

TEST(PeerDirectory, EverythingHeldIsAnnouncedAgainPeriodically) {
  const int port = free_port();
  redis_server server(port);
  inspector look(port);
  node n(port, 300ms);
  n.dir->set_holdings([] { return std::vector<std::string>{k_a}; });
  n.dir->start();
  ASSERT_TRUE(eventually([&] { return !look.members("t:blob:" + k_a).empty(); }));
  // The holder set expired (held longer than holder_ttl) while the node beat on.
  ASSERT_TRUE(look.run({"DEL", "t:blob:" + k_a}));
  EXPECT_TRUE(eventually([&] { return !look.members("t:blob:" + k_a).empty(); }, 2s));
  n.dir->stop();
}

TEST(PeerDirectory, WaitsUntilTheCacheKnowsWhatItHolds) {
  const int port = free_port();
  redis_server server(port);
  inspector look(port);
  node n(port);
  std::atomic<int> asked = 0;
  // The cache's index is still being read for the first few asks.
  n.dir->set_holdings([&]() -> std::optional<std::vector<std::string>> {
    if (++asked < 5) return std::nullopt;
    return std::vector<std::string>{k_a};
  });
  n.dir->start();
  ASSERT_TRUE(eventually([&] { return !look.members("t:blob:" + k_a).empty(); }));
  EXPECT_GE(asked.load(), 5);
  // Once announced, nothing asks again while the backend remembers the node.
  const int after = asked.load();
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(asked.load(), after);
  n.dir->stop();
}

TEST(PeerDirectory, NoHoldingsAreReadOnceTheyAreWithdrawn) {
  const int port = free_port();
  redis_server server(port);
  node n(port, 50ms);  // asks all the time
  std::atomic<int> asked = 0;
  std::atomic<bool> gone = false;
  std::atomic<bool> late = false;
  n.dir->set_holdings([&] {
    if (gone) late = true;
    ++asked;
    std::this_thread::sleep_for(20ms);  // a slow copy of a big cache's digests
    return std::vector<std::string>{k_a};
  });
  n.dir->start();
  ASSERT_TRUE(eventually([&] { return asked >= 3; }));
  // The store is about to close: once set_holdings returns, it is never read again.
  n.dir->set_holdings(nullptr);
  gone = true;
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(late);
  n.dir->stop();
}

TEST(PeerDirectory, AnnouncementsLostWhileTheBackendWasDownAreMadeAgain) {
  const int port = free_port();
  const auto dir = std::filesystem::temp_directory_path() / ("berth-dir-aof-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  redis_server server(port, {}, dir.string());  // keeps its data across a restart
  inspector look(port);
  metrics::registry m;
  m.peers_configured();
  peer::directory::options o;
  o.prefix = "t:";
  o.self = "127.0.0.10:5051";
  o.heartbeat = 2s;  // the node's key outlives a quick restart
  auto backend = std::make_shared<meta::redis_client>(backend_options(port), m);
  peer::directory dir_(backend, o, m);
  std::mutex mu;
  std::vector<std::string> held{k_a};
  dir_.set_holdings([&] {
    std::lock_guard lock(mu);
    return held;
  });
  dir_.start();
  ASSERT_TRUE(eventually([&] { return !look.members("t:blob:" + k_a).empty(); }));
  // Dragonfly goes down; a blob published meanwhile is not announced (the write fails).
  server.stop();
  {
    std::lock_guard lock(mu);
    held.push_back(k_b);
  }
  dir_.published(k_b, 1);
  dir_.flush();
  // It comes back with its data: this node's key is still there, so the heartbeat
  // does not say "forgotten". The lost write is made again all the same.
  server.start();
  // (The inspector's first command after the restart meets its closed connection.)
  ASSERT_TRUE(eventually(
      [&] {
        const auto r = look.run({"EXISTS", "t:node:127.0.0.10:5051"});
        return r && r->type == meta::reply::kind::integer && r->integer == 1;
      },
      1s));
  std::optional<meta::reply> members;
  ASSERT_TRUE(eventually(
      [&] {
        members = look.run({"SCARD", "t:blob:" + k_b});
        return members && members->type == meta::reply::kind::integer;
      },
      1s));
  EXPECT_EQ(members->integer, 0);
  EXPECT_TRUE(eventually([&] { return look.members("t:blob:" + k_b).count("127.0.0.10:5051") == 1; }, 8s));
  dir_.stop();
  server.stop();
  std::filesystem::remove_all(dir);
}

TEST(PeerDirectory, ABigAnnouncementKeepsTheNodeAlive) {
  const int port = free_port();
  redis_server server(port);
  inspector look(port);
  node n(port);  // heartbeat every 100 ms, expiring after 300 ms
  std::vector<std::string> many;
  for (int i = 0; i < 30000; ++i) {
    std::string hex = std::to_string(i);
    many.push_back("sha256:" + std::string(64 - hex.size(), '0') + hex);
  }
  n.dir->set_holdings([&] { return many; });
  n.dir->start();
  // While the 30 000 blobs are announced (paced, between heartbeats), the node's key
  // never expires: the other nodes never see it as dead.
  ASSERT_TRUE(eventually([&] { return look.run({"EXISTS", "t:node:127.0.0.10:5051"})->integer == 1; }));
  bool always_alive = true;
  const bool done = eventually(
      [&] {
        if (look.run({"EXISTS", "t:node:127.0.0.10:5051"})->integer != 1) always_alive = false;
        return !look.members("t:blob:" + many.back()).empty();
      },
      20s);
  EXPECT_TRUE(done);
  EXPECT_TRUE(always_alive);
  EXPECT_FALSE(look.members("t:blob:" + many.front()).empty());
  EXPECT_FALSE(look.members("t:blob:" + many[15000]).empty());
  n.dir->stop();
}
