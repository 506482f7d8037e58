// open()'s index read in the background (issue #16: ready in milliseconds whatever the
// cache's size). The read is held at its first record, so everything the test does
// meanwhile lands after the read's snapshot of the index: the merge must count what
// is there, once, and order it as a sync open would.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include <unistd.h>

#include "core/hasher.hpp"
#include "faulting_index.hpp"
#include "metrics/metrics.hpp"
#include "store/blob_store.hpp"
#include "store/index.hpp"

#include <rocksdb/db.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

using namespace berth;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// The real index; its scan stops at the first record until release() (the snapshot
// the scan reads is taken before that).
class held_scan_index final : public store::index {
 public:
  struct gate {
    std::mutex mu;
    std::condition_variable cv;
    bool holding = false;
    bool released = false;
    void release() {
      std::lock_guard lock(mu);
      released = true;
      cv.notify_all();
    }
    // True once a scan is held.
    bool wait_holding(std::chrono::milliseconds limit) {
      std::unique_lock lock(mu);
      return cv.wait_for(lock, limit, [this] { return holding; });
    }
  };
  held_scan_index(std::unique_ptr<store::index> real, std::shared_ptr<gate> g) : real_(std::move(real)), gate_(g) {}
  std::optional<store::blob_entry> get(const std::string& d, boost::system::error_code& ec) override {
    return real_->get(d, ec);
  }
  bool put(const std::string& d, const store::blob_entry& e) override { return real_->put(d, e); }
  void erase(const std::string& d) override { real_->erase(d); }
  repaired repair(const std::string& d) override { return real_->repair(d); }
  bool for_each(const std::function<void(const std::string&, const store::blob_entry&)>& fn,
                std::vector<std::string>* stale) override {
    bool first = true;
    return real_->for_each(
        [&](const std::string& d, const store::blob_entry& e) {
          if (std::exchange(first, false)) {
            std::unique_lock lock(gate_->mu);
            gate_->holding = true;
            gate_->cv.notify_all();
            gate_->cv.wait(lock, [this] { return gate_->released; });
          }
          fn(d, e);
        },
        stale);
  }

 private:
  std::unique_ptr<store::index> real_;
  std::shared_ptr<gate> gate_;
};

struct recorder final : store::observer {
  std::mutex mu;
  std::vector<std::string> evicted_in_order;
  void published(const std::string&, std::uint64_t) override {}
  void evicted(const std::string& d, std::uint64_t) override {
    std::lock_guard lock(mu);
    evicted_in_order.push_back(d);
  }
  void invalidated(const std::string&, std::string_view) override {}
};

struct blob {
  std::string digest;
  std::string data;
};

class index_read_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("berth-index-read-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    if (gate_) gate_->release();
    store_.reset();
    fs::remove_all(dir_);
  }
  // A cache left by an earlier run: blob i (1000 + i bytes) last read at 1000 * (i + 1),
  // so blob 0 is the least recently used.
  void make_cache(unsigned n) {
    auto idx = store::index::open((dir_ / "index").string());
    for (unsigned i = 0; i < n; ++i) {
      blob b;
      b.data = std::string(1000 + i, static_cast<char>('a' + i));
      b.digest = core::digest_of(b.data);
      const auto hex = b.digest.substr(7);
      const auto d = dir_ / "blobs" / "sha256" / hex.substr(0, 2);
      fs::create_directories(d);
      std::ofstream(d / hex, std::ios::binary) << b.data;
      const std::int64_t at = 1000 * (i + 1);
      ASSERT_TRUE(idx->put(b.digest, {b.data.size(), "application/octet-stream", at, at, {}, std::nullopt}));
      blobs_.push_back(std::move(b));
    }
  }
  store::blob_store& open(store::blob_store::index_load load, bool held, std::uint64_t max_bytes = 0) {
    store::store_options o;
    o.dir = dir_.string();
    o.max_bytes = max_bytes;
    o.low_watermark = 0.5;
    store::blob_store::index_opener opener;
    if (held) {
      gate_ = std::make_shared<held_scan_index::gate>();
      opener = [g = gate_](const std::string& path) -> std::unique_ptr<store::index> {
        return std::make_unique<held_scan_index>(store::index::open(path), g);
      };
    }
    store_ = std::make_unique<store::blob_store>(o, store::posix_filesystem(), metrics_, opener);
    store_->subscribe(seen_);
    store_->open(load);
    if (held) {
      EXPECT_TRUE(gate_->wait_holding(10s)) << "the index read did not start";
    }
    return *store_;
  }
  static std::string read_all(const store::open_blob& b) {
    std::string out(b.entry().size, '\0');
    EXPECT_EQ(::pread(b.fd(), out.data(), out.size(), 0), static_cast<ssize_t>(out.size()));
    return out;
  }
  // A whole fill of `data`, without waiting for its publish (which is disk-thread work).
  void fill_without_flush(const std::string& data) {
    bool created = false;
    auto f = store_->join_or_start(core::digest_of(data), "sha256", created);
    ASSERT_TRUE(created);
    ASSERT_TRUE(f->start(data.size(), "application/octet-stream"));
    ASSERT_TRUE(f->append(data.data(), data.size()));
    ASSERT_EQ(f->finish(), store::fill_failure::none);
  }
  std::uint64_t total(std::initializer_list<unsigned> which) const {
    std::uint64_t n = 0;
    for (const auto i : which) n += blobs_[i].data.size();
    return n;
  }

  fs::path dir_;
  metrics::registry metrics_;
  std::vector<blob> blobs_;
  std::shared_ptr<held_scan_index::gate> gate_;
  std::shared_ptr<recorder> seen_ = std::make_shared<recorder>();
  std::unique_ptr<store::blob_store> store_;
};

TEST_F(index_read_test, ABackgroundReadOrdersAndCountsLikeASyncOne) {
  make_cache(6);
  std::vector<std::string> orders[2];
  store::blob_store::usage usages[2];
  for (const auto load : {store::blob_store::index_load::now, store::blob_store::index_load::background}) {
    auto& s = open(load, false);
    s.wait_loaded();
    const auto k = load == store::blob_store::index_load::now ? 0 : 1;
    usages[k] = s.current_usage();
    s.evict_to(0);
    s.flush();
    orders[k] = seen_->evicted_in_order;
    seen_->evicted_in_order.clear();
    store_.reset();
    fs::remove_all(dir_);
    blobs_.clear();
    make_cache(6);
  }
  EXPECT_EQ(usages[0].blobs, 6u);
  EXPECT_EQ(usages[0].bytes, total({0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(usages[1].blobs, usages[0].blobs);
  EXPECT_EQ(usages[1].bytes, usages[0].bytes);
  std::vector<std::string> oldest_first;
  for (const auto& b : blobs_) oldest_first.push_back(b.digest);
  EXPECT_EQ(orders[0], oldest_first);
  EXPECT_EQ(orders[1], oldest_first);
}

TEST_F(index_read_test, WhileTheReadRunsHitsAreServedAndWhatHappensIsMerged) {
  make_cache(5);
  auto& s = open(store::blob_store::index_load::background, true);
  EXPECT_FALSE(s.loaded());

  // A hit on the least recently used blob: served from the index, and remembered.
  boost::system::error_code ec;
  auto hit = s.lookup(blobs_[0].digest, ec);
  ASSERT_TRUE(hit) << ec.message();
  EXPECT_EQ(read_all(*hit), blobs_[0].data);
  hit.reset();
  // A damaged blob, dropped: the read (whose snapshot still has it) must not count it.
  s.damaged(blobs_[1].digest, "scripted");
  // A new blob: its fill completes; the publish waits for the read (disk-thread work).
  const std::string fresh(500, 'z');
  fill_without_flush(fresh);
  EXPECT_FALSE(s.stat(core::digest_of(fresh))) << "published before the index read ended";
  EXPECT_EQ(s.current_usage().blobs, 0u);
  EXPECT_FALSE(s.loaded());

  gate_->release();
  s.wait_loaded();
  s.flush();
  EXPECT_TRUE(s.loaded());
  const auto u = s.current_usage();
  EXPECT_EQ(u.blobs, 5u);  // 0, 2, 3, 4 and the new one
  EXPECT_EQ(u.bytes, total({0, 2, 3, 4}) + fresh.size());
  EXPECT_EQ(u.temp, 0u);
  const auto exported = metrics_.serialize();
  EXPECT_NE(exported.find("berth_cache_objects 5\n"), std::string::npos) << exported;
  EXPECT_NE(exported.find("berth_cache_size_bytes " + std::to_string(u.bytes) + "\n"), std::string::npos);
  EXPECT_FALSE(s.stat(blobs_[1].digest));
  // The hit reached the index too (for the next start's order).
  const auto e0 = s.stat(blobs_[0].digest);
  ASSERT_TRUE(e0);
  EXPECT_GT(e0->last_access, 1000);

  // The order: the untouched ones oldest first, then the one hit during the read,
  // then the one published after it.
  s.evict_to(0);
  s.flush();
  const std::vector<std::string> expected = {blobs_[2].digest, blobs_[3].digest, blobs_[4].digest, blobs_[0].digest,
                                             core::digest_of(fresh)};
  EXPECT_EQ(seen_->evicted_in_order, expected);
  EXPECT_EQ(s.current_usage().bytes, 0u);
  EXPECT_EQ(s.current_usage().blobs, 0u);
}

TEST_F(index_read_test, EvictionWaitsForTheWholeUsage) {
  make_cache(4);
  auto& s = open(store::blob_store::index_load::background, true);
  auto evicting = std::async(std::launch::async, [&s] { return s.evict_to(0); });
  EXPECT_EQ(evicting.wait_for(200ms), std::future_status::timeout) << "evicted from a partial usage";
  gate_->release();
  ASSERT_EQ(evicting.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(evicting.get(), total({0, 1, 2, 3}));
  EXPECT_EQ(s.current_usage().blobs, 0u);
}

TEST_F(index_read_test, RoomClaimedDuringTheReadIsMadeOnceItEnds) {
  make_cache(4);  // 4006 bytes
  auto& s = open(store::blob_store::index_load::background, true, 5000);
  // A fill announcing 2000 bytes: over the limit once the usage is whole.
  bool created = false;
  auto f = s.join_or_start(core::digest_of(std::string(2000, 'q')), "sha256", created);
  ASSERT_TRUE(f->start(2000, "application/octet-stream"));
  gate_->release();
  s.wait_loaded();
  s.flush();
  const auto u = s.current_usage();
  EXPECT_EQ(u.temp, 2000u);
  EXPECT_LE(u.bytes + u.temp, 2500u) << "down to the low watermark (50%)";
  EXPECT_EQ(seen_->evicted_in_order.front(), blobs_[0].digest);
  f->fail(store::fill_failure::upstream_broken);
}

TEST_F(index_read_test, ClosingDuringTheReadIsClean) {
  make_cache(3);
  open(store::blob_store::index_load::background, true);
  auto releaser = std::async(std::launch::async, [g = gate_] {
    std::this_thread::sleep_for(50ms);
    g->release();
  });
  store_.reset();  // waits for the read, which finishes
  releaser.get();
  auto& s = open(store::blob_store::index_load::now, false);
  EXPECT_EQ(s.current_usage().blobs, 3u);
}

TEST_F(index_read_test, AReadThatCannotFinishLeavesTheCacheServingButCachingNothing) {
  make_cache(3);
  auto fail_reads = std::make_shared<std::atomic<bool>>(true);
  store::store_options o;
  o.dir = dir_.string();
  store_ = std::make_unique<store::blob_store>(o, store::posix_filesystem(), metrics_,
                                               berth::testing::faulting_index_opener(fail_reads));
  store_->open(store::blob_store::index_load::background);
  store_->wait_loaded();
  *fail_reads = false;
  EXPECT_FALSE(store_->writable()) << "caching with a usage that is short";
  EXPECT_NE(metrics_.serialize().find("berth_cache_index_errors_total 1\n"), std::string::npos);
  boost::system::error_code ec;
  auto hit = store_->lookup(blobs_[2].digest, ec);
  ASSERT_TRUE(hit) << ec.message();
  EXPECT_EQ(read_all(*hit), blobs_[2].data);
  hit.reset();
  store_.reset();

  // Opened now, the same read error stops the start instead.
  *fail_reads = true;
  store_ = std::make_unique<store::blob_store>(o, store::posix_filesystem(), metrics_,
                                               berth::testing::faulting_index_opener(fail_reads));
  EXPECT_THROW(store_->open(store::blob_store::index_load::now), std::runtime_error);
}

TEST_F(index_read_test, ALegacyRecordDroppedDuringTheReadStaysDroppedAndTheOthersAreRewritten) {
  // Records as a Berth before the version byte wrote them, with their files.
  fs::create_directories(dir_ / "index");
  for (unsigned i = 0; i < 2; ++i) {
    blob b;
    b.data = std::string(700 + i, static_cast<char>('k' + i));
    b.digest = core::digest_of(b.data);
    const auto hex = b.digest.substr(7);
    fs::create_directories(dir_ / "blobs" / "sha256" / hex.substr(0, 2));
    std::ofstream(dir_ / "blobs" / "sha256" / hex.substr(0, 2) / hex, std::ios::binary) << b.data;
    blobs_.push_back(std::move(b));
  }
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, (dir_ / "index").string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    for (const auto& b : blobs_) {
      ASSERT_TRUE(db->Put({}, b.digest, std::to_string(b.data.size()) + " 1 2 application/octet-stream").ok());
    }
  }
  auto& s = open(store::blob_store::index_load::background, true);
  // Blob 0's file is gone: the hit finds out and drops it, after the read's snapshot.
  fs::remove(s.blob_path(blobs_[0].digest));
  boost::system::error_code ec;
  EXPECT_FALSE(s.lookup(blobs_[0].digest, ec));
  EXPECT_FALSE(ec);
  gate_->release();
  s.wait_loaded();
  s.flush();
  EXPECT_FALSE(s.stat(blobs_[0].digest)) << "the read's rewrite brought the dropped record back";
  EXPECT_EQ(s.current_usage().blobs, 1u);
  EXPECT_EQ(s.current_usage().bytes, blobs_[1].data.size());
  store_.reset();
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), (dir_ / "index").string(), &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string v;
  EXPECT_TRUE(db->Get({}, blobs_[0].digest, &v).IsNotFound());
  ASSERT_TRUE(db->Get({}, blobs_[1].digest, &v).ok());
  EXPECT_FALSE(store::legacy_entry(v)) << "not rewritten in the current format: " << v;
}

TEST_F(index_read_test, ARepositoryConfirmedDuringTheReadDoesNotWaitForIt) {
  make_cache(2);
  auto& s = open(store::blob_store::index_load::background, true);
  boost::asio::io_context io;
  // Named: the coroutine holds references to its arguments.
  const std::string digest = blobs_[1].digest, repository = "registry.test/team/app";
  auto done = boost::asio::co_spawn(io, s.confirm_source(digest, repository), boost::asio::use_future);
  io.run_for(5s);
  ASSERT_EQ(done.wait_for(0s), std::future_status::ready) << "the hit's confirmation waited for the index read";
  EXPECT_FALSE(s.loaded());
  const auto e = s.stat(blobs_[1].digest);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->find_source("registry.test/team/app"));
}

// An index whose scan throws (what a failed allocation does on a huge index).
class throwing_scan_index final : public store::index {
 public:
  explicit throwing_scan_index(std::unique_ptr<store::index> real) : real_(std::move(real)) {}
  std::optional<store::blob_entry> get(const std::string& d, boost::system::error_code& ec) override {
    return real_->get(d, ec);
  }
  bool put(const std::string& d, const store::blob_entry& e) override { return real_->put(d, e); }
  void erase(const std::string& d) override { real_->erase(d); }
  repaired repair(const std::string& d) override { return real_->repair(d); }
  bool for_each(const std::function<void(const std::string&, const store::blob_entry&)>&,
                std::vector<std::string>*) override {
    throw std::bad_alloc();
  }

 private:
  std::unique_ptr<store::index> real_;
};

TEST_F(index_read_test, AReadThatThrowsDoesNotLeaveTheStoreWaitingForIt) {
  make_cache(2);
  store::store_options o;
  o.dir = dir_.string();
  const store::blob_store::index_opener opener = [](const std::string& path) -> std::unique_ptr<store::index> {
    return std::make_unique<throwing_scan_index>(store::index::open(path));
  };
  store_ = std::make_unique<store::blob_store>(o, store::posix_filesystem(), metrics_, opener);
  store_->open(store::blob_store::index_load::background);
  auto waiting = std::async(std::launch::async, [this] {
    store_->wait_loaded();
    return store_->reconcile();  // waits for the read too
  });
  ASSERT_EQ(waiting.wait_for(10s), std::future_status::ready) << "waiting for a read that died";
  waiting.get();
  EXPECT_FALSE(store_->writable());
  EXPECT_NE(metrics_.serialize().find("berth_cache_index_errors_total 1\n"), std::string::npos);
  store_.reset();
  store_ = std::make_unique<store::blob_store>(o, store::posix_filesystem(), metrics_, opener);
  EXPECT_THROW(store_->open(store::blob_store::index_load::now), std::runtime_error);
}

}  // namespace
