#include "store/blob_store.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "core/chunk_hash.hpp"
#include "core/hasher.hpp"
#include "faulting_index.hpp"
#include "store/index.hpp"

#include <rocksdb/db.h>
#include "metrics/metrics.hpp"

using namespace berth;
namespace fs = std::filesystem;
namespace asio = boost::asio;

namespace {

// The real filesystem, with faults on demand: ENOSPC once `space_left` runs out,
// and writes cut short to at most `max_write` bytes.
class faulting_fs final : public store::forwarding_filesystem {
 public:
  std::atomic<std::int64_t> space_left{std::numeric_limits<std::int64_t>::max()};
  std::size_t max_write = 0;                            // 0: no limit
  std::atomic<int> open_error{0};                       // errno for every open_read (0: none)
  std::function<void(const std::string&)> before_open;  // runs inside open_read, to interleave
  std::atomic<int> dir_syncs{0};
  // The threads the durable steps ran on (fsync, rename, directory fsync).
  std::mutex mu;
  std::vector<std::thread::id> durable_threads;

  int open_read(const std::string& p, boost::system::error_code& ec) override {
    if (const int e = open_error.load()) {
      ec = {e, boost::system::system_category()};
      return -1;
    }
    if (before_open) before_open(p);
    return forwarding_filesystem::open_read(p, ec);
  }
  std::size_t pwrite(int fd, const void* d, std::size_t n, std::uint64_t off, boost::system::error_code& ec) override {
    if (max_write > 0) n = std::min(n, max_write);
    if (space_left.load() < static_cast<std::int64_t>(n)) {
      ec = {ENOSPC, boost::system::system_category()};
      return 0;
    }
    space_left -= static_cast<std::int64_t>(n);
    return forwarding_filesystem::pwrite(fd, d, n, off, ec);
  }
  void fsync(int fd, boost::system::error_code& ec) override {
    note_thread();
    forwarding_filesystem::fsync(fd, ec);
  }
  void fsync_dir(const std::string& d, boost::system::error_code& ec) override {
    ++dir_syncs;
    note_thread();
    forwarding_filesystem::fsync_dir(d, ec);
  }
  void rename(const std::string& a, const std::string& b, boost::system::error_code& ec) override {
    note_thread();
    forwarding_filesystem::rename(a, b, ec);
  }

 private:
  void note_thread() {
    std::lock_guard lock(mu);
    durable_threads.push_back(std::this_thread::get_id());
  }
};

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class store_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("berth-store-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }
  store::blob_store& open(std::uint64_t max_bytes = 0) {
    store::store_options o;
    o.dir = dir_.string();
    o.max_bytes = max_bytes;
    o.low_watermark = 0.5;
    store_ = std::make_unique<store::blob_store>(o, fault_, metrics_);
    store_->open();
    return *store_;
  }
  // Runs a whole fill of `data` in `chunk`-sized appends; returns its result.
  store::fill_failure fill_with(const std::string& digest, const std::string& data, std::size_t chunk = 4096) {
    bool created = false;
    auto f = store_->join_or_start(digest, "sha256", created);
    EXPECT_TRUE(created);
    if (!f->start(data.size(), "application/octet-stream")) return f->snapshot().failure;
    for (std::size_t i = 0; i < data.size(); i += chunk) {
      if (!f->append(data.data() + i, std::min(chunk, data.size() - i))) return f->snapshot().failure;
    }
    const auto verified = f->finish();
    store_->flush();  // the publish runs on the store's disk thread
    return verified;
  }
  // A fill of `data` started, and a client following it from byte 0.
  struct followed {
    std::shared_ptr<store::fill> fill;
    std::unique_ptr<core::body_source> follower;
  };
  followed start_followed(const std::string& data) {
    bool created = false;
    auto f = store_->join_or_start(core::digest_of(data), "sha256", created);
    EXPECT_TRUE(created);
    EXPECT_TRUE(f->start(data.size(), "application/octet-stream"));
    boost::system::error_code ec;
    const int fd = f->open_for_read(ec);
    EXPECT_FALSE(ec);
    auto body = store::fill_body(f, fd, 0, data.size(), std::chrono::seconds(5));
    return {std::move(f), std::move(body)};
  }
  static std::shared_ptr<store::open_blob> lookup(store::blob_store& s, const std::string& digest) {
    boost::system::error_code ec;
    auto hit = s.lookup(digest, ec);
    EXPECT_FALSE(ec) << ec.message();
    return hit;
  }
  std::string read_all(const std::string& digest) {
    auto hit = lookup(*store_, digest);
    if (!hit) return "<miss>";
    std::string out(hit->entry().size, '\0');
    boost::system::error_code ec;
    const auto n = store_->fs().pread(hit->fd(), out.data(), out.size(), 0, ec);
    out.resize(n);
    return out;
  }

  fs::path dir_;
  std::shared_ptr<faulting_fs> fault_ = std::make_shared<faulting_fs>();
  metrics::registry metrics_;
  std::unique_ptr<store::blob_store> store_;
};

}  // namespace

TEST_F(store_test, AVerifiedFillIsPublishedIndexedAndServed) {
  auto& s = open();
  const auto data = random_bytes(100000, 1);
  const auto digest = core::digest_of(data);
  EXPECT_FALSE(lookup(s, digest));
  EXPECT_EQ(fill_with(digest, data), store::fill_failure::none);
  EXPECT_EQ(read_all(digest), data);
  ASSERT_TRUE(s.stat(digest));
  EXPECT_EQ(s.stat(digest)->size, data.size());
  EXPECT_TRUE(fs::exists(s.blob_path(digest)));
  EXPECT_EQ(s.current_usage().bytes, data.size());
  EXPECT_TRUE(fs::is_empty(dir_ / "tmp"));
}

TEST_F(store_test, WrongBytesAreNeverPublished) {
  auto& s = open();
  const auto data = random_bytes(50000, 2);
  const auto digest = core::digest_of(data);
  auto wrong = data;
  wrong[49999] ^= 1;
  EXPECT_EQ(fill_with(digest, wrong), store::fill_failure::digest_mismatch);
  EXPECT_FALSE(lookup(s, digest));
  EXPECT_FALSE(s.stat(digest));
  EXPECT_TRUE(fs::is_empty(dir_ / "tmp"));
  // Nor is a body longer than announced.
  bool created = false;
  auto f = s.join_or_start(digest, "sha256", created);
  ASSERT_TRUE(f->start(10, ""));
  EXPECT_FALSE(f->append(data.data(), 11));
  EXPECT_EQ(f->snapshot().failure, store::fill_failure::digest_mismatch);
}

TEST_F(store_test, ShortWritesStillProduceTheRightBlob) {
  open();
  fault_->max_write = 777;
  const auto data = random_bytes(65536, 3);
  const auto digest = core::digest_of(data);
  EXPECT_EQ(fill_with(digest, data, 10000), store::fill_failure::none);
  EXPECT_EQ(read_all(digest), data);
}

TEST_F(store_test, DiskFullFailsTheFillAndMarksTheStoreUnwritable) {
  auto& s = open();
  fault_->space_left = 30000;
  const auto data = random_bytes(65536, 4);
  const auto digest = core::digest_of(data);
  EXPECT_EQ(fill_with(digest, data), store::fill_failure::disk);
  EXPECT_FALSE(lookup(s, digest));
  EXPECT_FALSE(s.writable());
  EXPECT_TRUE(fs::is_empty(dir_ / "tmp"));
  EXPECT_NE(metrics_.serialize().find("berth_cache_disk_errors_total 1"), std::string::npos);
}

TEST_F(store_test, OneFillPerDigestAndAFailedFillMakesRoomForTheNext) {
  auto& s = open();
  bool created = false;
  auto a = s.join_or_start("sha256:" + std::string(64, 'a'), "sha256", created);
  EXPECT_TRUE(created);
  auto b = s.join_or_start("sha256:" + std::string(64, 'a'), "sha256", created);
  EXPECT_FALSE(created);
  EXPECT_EQ(a, b);
  a->fail(store::fill_failure::upstream_broken);
  auto c = s.join_or_start("sha256:" + std::string(64, 'a'), "sha256", created);
  EXPECT_TRUE(created);
  EXPECT_NE(c, a);
}

TEST_F(store_test, RestartRemovesTempFilesAndKeepsPublishedBlobs) {
  const auto data = random_bytes(1000, 5);
  const auto digest = core::digest_of(data);
  {
    auto& s = open();
    EXPECT_EQ(fill_with(digest, data), store::fill_failure::none);
    bool created = false;
    auto half = s.join_or_start(core::digest_of("other"), "sha256", created);
    ASSERT_TRUE(half->start(5, ""));
    ASSERT_TRUE(half->append("ot", 2));
    // A kill -9 here: the process never runs the fill's destructor.
    std::ignore = new std::shared_ptr<store::fill>(half);
  }
  store_.reset();
  EXPECT_FALSE(fs::is_empty(dir_ / "tmp"));
  auto& s = open();
  EXPECT_TRUE(fs::is_empty(dir_ / "tmp"));
  EXPECT_EQ(read_all(digest), data);
  EXPECT_FALSE(lookup(s, core::digest_of("other")));
  EXPECT_EQ(s.current_usage().blobs, 1u);
}

TEST_F(store_test, AnIndexedBlobWhoseFileVanishedIsAMiss) {
  auto& s = open();
  const auto data = random_bytes(1000, 6);
  const auto digest = core::digest_of(data);
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  fs::remove(s.blob_path(digest));
  EXPECT_FALSE(lookup(s, digest));
  EXPECT_FALSE(s.stat(digest));
  EXPECT_EQ(s.current_usage().bytes, 0u);
}

TEST_F(store_test, EvictionIsLeastRecentlyUsedAndSparesOpenBlobs) {
  auto& s = open(2500);  // low watermark 0.5: evicts down to 1250 bytes
  std::vector<std::string> digests;
  for (unsigned i = 0; i < 2; ++i) {
    const auto data = random_bytes(1000, 10 + i);
    digests.push_back(core::digest_of(data));
    ASSERT_EQ(fill_with(digests.back(), data), store::fill_failure::none);
  }
  auto reader = lookup(s, digests[0]);  // held open: must survive eviction
  const auto data = random_bytes(1000, 20);
  digests.push_back(core::digest_of(data));
  ASSERT_EQ(fill_with(digests.back(), data), store::fill_failure::none);  // 3000 > 2500: evict
  EXPECT_TRUE(s.stat(digests[0]));                                        // open
  EXPECT_FALSE(s.stat(digests[1]));                                       // oldest not in use: gone
  EXPECT_TRUE(s.stat(digests[2]));                                        // newest
  EXPECT_EQ(s.current_usage().bytes, 2000u);
  reader.reset();
  EXPECT_EQ(s.evict_to(1000), 1000u);
  EXPECT_EQ(s.current_usage().bytes, 1000u);
  EXPECT_NE(metrics_.serialize().find("berth_cache_evictions_total 2"), std::string::npos);
}

TEST_F(store_test, FollowersReadTheGrowingFileAndGetTheLastByteOnlyAfterVerification) {
  open();
  const auto data = random_bytes(300000, 7);
  auto started = start_followed(data);  // (no structured binding: lambdas below capture them)
  auto& f = started.fill;
  auto& body = started.follower;
  asio::io_context reader_ctx(1);
  std::string got;  // the reader thread's; read here only after join()
  std::atomic<std::size_t> received{0};
  std::atomic<bool> done{false};
  asio::co_spawn(
      reader_ctx,
      [&]() -> asio::awaitable<void> {
        char buf[8192];
        while (true) {
          boost::system::error_code rec;
          const auto n = co_await body->read(asio::buffer(buf), rec);
          EXPECT_FALSE(rec) << rec.message();
          if (rec || n == 0) break;
          got.append(buf, n);
          received = got.size();
        }
        done = true;
      },
      asio::detached);
  std::thread reader([&] { reader_ctx.run(); });
  for (std::size_t i = 0; i < data.size(); i += 50000) {
    ASSERT_TRUE(f->append(data.data() + i, std::min<std::size_t>(50000, data.size() - i)));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Everything but the last byte arrives; the last waits for verification.
  for (int i = 0; i < 500 && received.load() < data.size() - 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(received.load(), data.size() - 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(received.load(), data.size() - 1);
  EXPECT_FALSE(done.load());
  EXPECT_EQ(f->finish(), store::fill_failure::none);
  store_->flush();
  reader.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(got, data);
}

TEST_F(store_test, ReconcileAdoptsPublishedFilesTheIndexLost) {
  const auto data = random_bytes(4096, 30);
  const auto digest = core::digest_of(data);
  {
    open();
    ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  }
  store_.reset();
  // A crash between the rename and the index write: the file is there, the entry not.
  fs::remove_all(dir_ / "index");
  auto& s = open();
  EXPECT_FALSE(lookup(s, digest));
  EXPECT_EQ(s.reconcile(), 1u);
  EXPECT_EQ(read_all(digest), data);
  ASSERT_TRUE(s.stat(digest));
  EXPECT_TRUE(s.stat(digest)->sources.empty());  // the upstream re-authorizes repositories
  EXPECT_EQ(s.current_usage().bytes, data.size());
  EXPECT_EQ(s.reconcile(), 0u);
}

namespace {

// Reads a whole body on a fresh io_context: the bytes, and whether it ended cleanly.
std::pair<std::string, bool> drain(core::body_source& body) {
  asio::io_context ctx;
  std::string got;
  bool ended = false;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        std::vector<char> buf(64 * 1024);
        while (true) {
          boost::system::error_code ec;
          const auto n = co_await body.read(asio::buffer(buf), ec);
          if (ec) co_return;
          if (n == 0) {
            ended = true;
            co_return;
          }
          got.append(buf.data(), n);
        }
      },
      asio::detached);
  ctx.run();
  return {got, ended};
}

void flip_byte(const std::string& path, std::uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x5a));
}

}  // namespace

TEST_F(store_test, OnlyAMissingFileDropsAnIndexEntry) {
  auto& s = open();
  const auto data = random_bytes(20000, 31);
  const auto digest = core::digest_of(data);
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  fault_->open_error = EMFILE;
  boost::system::error_code ec;
  EXPECT_FALSE(s.lookup(digest, ec));
  EXPECT_EQ(ec, boost::system::errc::too_many_files_open) << "out of descriptors is not a miss";
  EXPECT_TRUE(s.stat(digest)) << "the entry must stay";
  EXPECT_TRUE(fs::exists(s.blob_path(digest)));
  fault_->open_error = 0;
  EXPECT_EQ(read_all(digest), data);
  fs::remove(s.blob_path(digest));
  EXPECT_FALSE(s.lookup(digest, ec));
  EXPECT_FALSE(ec);
  EXPECT_FALSE(s.stat(digest)) << "a missing file is a miss and forgotten";
  EXPECT_EQ(s.current_usage().blobs, 0u);
}

TEST_F(store_test, AFileOfTheWrongSizeIsDroppedOnOpen) {
  auto& s = open();
  const auto data = random_bytes(30000, 32);
  const auto digest = core::digest_of(data);
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  fs::resize_file(s.blob_path(digest), data.size() / 2);
  EXPECT_FALSE(lookup(s, digest));
  EXPECT_FALSE(s.stat(digest));
  s.flush();  // the file is removed on the disk thread
  EXPECT_FALSE(fs::exists(s.blob_path(digest)));
  EXPECT_EQ(s.current_usage().bytes, 0u);
}

TEST_F(store_test, AChangedFileIsHashedWhileServedAndDroppedWhenWrong) {
  auto& s = open();
  const auto data = random_bytes(300000, 33);
  const auto digest = core::digest_of(data);
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  {
    auto hit = lookup(s, digest);
    ASSERT_TRUE(hit);
    EXPECT_FALSE(hit->unproven()) << "a fresh fill was hashed as it was written";
    EXPECT_TRUE(store::blob_body(hit, 0, data.size())->file()) << "proven hits may use sendfile";
  }
  flip_byte(s.blob_path(digest), 1234);
  for (auto [first, end] : {std::pair<std::uint64_t, std::uint64_t>{0, data.size()}, {1000, 2000}}) {
    ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);  // good bytes again
    flip_byte(s.blob_path(digest), 250000);                         // damage past the range, too
    auto hit = lookup(s, digest);
    ASSERT_TRUE(hit);
    EXPECT_TRUE(hit->unproven());
    auto body = store::blob_body(hit, first, end);
    EXPECT_FALSE(body->file()) << "an unproven file is read and hashed, not sent blind";
    const auto [got, ended] = drain(*body);
    EXPECT_FALSE(ended);
    EXPECT_LT(got.size(), end - first);
    EXPECT_FALSE(s.stat(digest)) << "dropped from the index";
    s.flush();
    EXPECT_FALSE(fs::exists(s.blob_path(digest)));
  }
}

TEST_F(store_test, AChangedButRightFileIsProvenOnceThenTrusted) {
  auto& s = open();
  const auto data = random_bytes(100000, 34);
  const auto digest = core::digest_of(data);
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  fs::permissions(s.blob_path(digest), fs::perms::owner_read);  // a new ctime, the same bytes
  auto hit = lookup(s, digest);
  ASSERT_TRUE(hit && hit->unproven());
  const auto [got, ended] = drain(*store::blob_body(hit, 10, 20));
  EXPECT_TRUE(ended);
  EXPECT_EQ(got, data.substr(10, 10));
  hit.reset();
  s.flush();  // the proof is recorded on the disk thread
  auto again = lookup(s, digest);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->unproven());
}

TEST_F(store_test, ASecondStoreCannotOpenALockedCacheEvenWithoutItsIndex) {
  open();
  fs::remove_all(dir_ / "index");
  store::store_options o;
  o.dir = dir_.string();
  store::blob_store second(o, store::posix_filesystem(), metrics_);
  try {
    second.open();
    FAIL() << "a second store opened a cache in use";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by another Berth"), std::string::npos) << e.what();
  }
}

TEST(StoreIndexRecord, RoundTripsAndRejectsGarbage) {
  store::blob_entry e{
      1234, "application/vnd.oci.image.layer.v1.tar+gzip",    10,
      20,   {{"reg/lib/a", 1700000000123}, {"reg/lib/b", 0}}, store::file_identity{1234, 99, 123456789}};
  const auto rec = store::encode_entry(e);
  EXPECT_EQ(rec.front(), '\x02');
  auto back = store::decode_entry(rec);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->size, 1234u);
  EXPECT_EQ(back->media_type, e.media_type);
  EXPECT_EQ(back->sources, e.sources);
  ASSERT_TRUE(back->verified_as);
  EXPECT_EQ(back->verified_as->inode, 99u);
  EXPECT_EQ(back->verified_as->ctime_ns, 123456789);
  for (std::string bad : {std::string(""), std::string("\x02"), std::string("\x02{}"), std::string("\x02[1]"),
                          std::string("\x03{\"size\":1}"), std::string("x 1 2 a/b"),
                          std::string("\x02{\"size\":-1,\"created\":1,\"last_access\":1,\"media_type\":\"a/b\"}"),
                          std::string("\x02{\"size\":1,\"created\":1,\"last_access\":1,\"media_type\":\"a b/c\"}"),
                          std::string("\x02{\"size\":1,\"created\":1,\"last_access\":1,\"media_type\":\"a/b\","
                                      "\"sources\":[7]}")}) {
    EXPECT_FALSE(store::decode_entry(bad)) << bad;
  }
}

TEST(StoreIndexRecord, SourcesWithoutAConfirmationTimeAreAskedAgain) {
  // Records from before confirmation times listed bare names: kept, with time 0, so
  // the next hit asks the upstream once.
  const auto e = store::decode_entry(
      "\x02{\"size\":1,\"created\":1,\"last_access\":1,\"media_type\":\"a/b\",\"sources\":[\"reg/lib/a\"]}");
  ASSERT_TRUE(e);
  ASSERT_EQ(e->sources.size(), 1u);
  EXPECT_EQ(e->sources[0], (store::source{"reg/lib/a", 0}));
  EXPECT_FALSE(store::decode_entry(
      "\x02{\"size\":1,\"created\":1,\"last_access\":1,\"media_type\":\"a/b\",\"sources\":[{\"name\":\"r/x\"}]}"))
      << "an object source needs its time";
}

TEST_F(store_test, SourcesAreConfirmedAndDropped) {
  const auto data = random_bytes(4096, 31);
  const auto digest = core::digest_of(data);
  auto& s = open();
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);
  const auto before = s.stat(digest)->sources;
  asio::io_context ctx;
  auto run = [&ctx](asio::awaitable<void> task) {
    asio::co_spawn(ctx, std::move(task), asio::detached);
    ctx.restart();
    ctx.run();
  };
  run(s.confirm_source(digest, "reg/lib/other"));
  auto e = s.stat(digest);
  ASSERT_TRUE(e->find_source("reg/lib/other"));
  EXPECT_GT(e->find_source("reg/lib/other")->confirmed, 0);
  EXPECT_EQ(e->sources.size(), before.size() + 1);
  run(s.confirm_source(digest, "reg/lib/other"));  // again: the time moves, no duplicate
  EXPECT_EQ(s.stat(digest)->sources.size(), before.size() + 1);
  run(s.drop_source(digest, "reg/lib/other"));
  EXPECT_FALSE(s.stat(digest)->find_source("reg/lib/other"));
  EXPECT_EQ(s.stat(digest)->sources, before);
}

TEST(StoreIndexRecord, LegacyRecordsLoseTheirSourcesAndAnInjectedMediaType) {
  // Version 1 of the record was space-separated: a Content-Type with a space in it
  // planted a repository as an authorized source.
  auto e = store::decode_entry("100 1 2 application/octet-stream registry.example.internal/lib/b");
  ASSERT_TRUE(e);
  EXPECT_TRUE(store::legacy_entry("100 1 2 a/b"));
  EXPECT_EQ(e->size, 100u);
  EXPECT_EQ(e->media_type, "application/octet-stream");
  EXPECT_TRUE(e->sources.empty()) << "sources from the old format are confirmed again";
  EXPECT_FALSE(e->verified_as) << "and the file is hashed again";
  auto odd = store::decode_entry("100 1 2 text/html;x=y");
  ASSERT_TRUE(odd);
  EXPECT_EQ(odd->media_type, "application/octet-stream");
}

TEST_F(store_test, OpeningMigratesLegacyRecordsAndDropsUndecodableOnes) {
  const auto legacy = "sha256:" + std::string(64, 'a');
  const auto garbage = "sha256:" + std::string(64, 'b');
  {
    // Records as an older Berth wrote them, straight into RocksDB.
    fs::create_directories(dir_ / "index");
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, (dir_ / "index").string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put({}, legacy, "5 1 2 application/octet-stream reg/planted/repo").ok());
    ASSERT_TRUE(db->Put({}, garbage, "\x09not a record").ok());
  }
  auto& s = open();
  auto e = s.stat(legacy);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->size, 5u);
  EXPECT_TRUE(e->sources.empty());
  EXPECT_FALSE(s.stat(garbage));
  store_.reset();
  auto idx = store::index::open((dir_ / "index").string(), true);
  std::size_t records = 0;
  idx->for_each([&](const std::string& d, const store::blob_entry&) {
    ++records;
    EXPECT_EQ(d, legacy);
  });
  EXPECT_EQ(records, 1u) << "the undecodable record is gone";
}

TEST_F(store_test, AnEvictionBetweenALookupAndItsOpenNeverCountsABlobTwice) {
  // A lookup used to count its reader only after opening the file: an eviction in
  // between took the blob, the open found no file, and the blob's size came off the
  // usage a second time. Here the eviction runs inside the open, deterministically.
  auto& s = open();
  std::vector<std::string> digests;
  for (unsigned i = 0; i < 3; ++i) {
    const auto data = random_bytes(4096, 40 + i);
    digests.push_back(core::digest_of(data));
    ASSERT_EQ(fill_with(digests.back(), data), store::fill_failure::none);
  }
  auto held_b = lookup(s, digests[1]);  // B and C have readers: not evictable
  auto held_c = lookup(s, digests[2]);
  ASSERT_TRUE(held_b && held_c);
  bool evicted = false;
  fault_->before_open = [&](const std::string&) {
    if (!std::exchange(evicted, true)) s.evict_to(0);
  };
  auto a = lookup(s, digests[0]);
  fault_->before_open = nullptr;
  ASSERT_TRUE(evicted);
  EXPECT_TRUE(a) << "counted before the open: the eviction left it alone";
  std::uint64_t indexed_bytes = 0, indexed = 0;
  for (const auto& d : digests) {
    if (auto e = s.stat(d)) {
      indexed_bytes += e->size;
      ++indexed;
    }
  }
  EXPECT_EQ(s.current_usage().bytes, indexed_bytes);
  EXPECT_EQ(s.current_usage().blobs, indexed);
  // Released, they go; once each.
  a.reset();
  held_b.reset();
  held_c.reset();
  s.evict_to(0);
  EXPECT_EQ(s.current_usage().bytes, 0u);
  EXPECT_EQ(s.current_usage().blobs, 0u);
}

TEST_F(store_test, APublishedBlobsDirectoryIsSynced) {
  open();
  const auto data = random_bytes(4096, 50);
  const auto before = fault_->dir_syncs.load();
  ASSERT_EQ(fill_with(core::digest_of(data), data), store::fill_failure::none);
  EXPECT_EQ(fault_->dir_syncs.load(), before + 1) << "the rename is made durable";
}

TEST_F(store_test, FillsUnderWayCountTowardTheLimit) {
  // max 16 KiB, low watermark 0.5: two published blobs (8 KiB), then a 12 KiB fill
  // starts. Its temp bytes count at once: published blobs go to make room.
  auto& s = open(4 * 4096);
  for (unsigned i = 0; i < 2; ++i) {
    const auto data = random_bytes(4096, 60 + i);
    ASSERT_EQ(fill_with(core::digest_of(data), data), store::fill_failure::none);
  }
  EXPECT_EQ(s.current_usage().bytes, 8192u);
  const auto big = random_bytes(3 * 4096, 70);
  bool created = false;
  auto f = s.join_or_start(core::digest_of(big), "sha256", created);
  ASSERT_TRUE(f->start(big.size(), "application/octet-stream"));
  s.flush();  // the eviction for room runs on the disk thread
  auto u = s.current_usage();
  EXPECT_EQ(u.temp, big.size());
  EXPECT_LE(u.bytes + u.temp, u.limit) << "room made before the bytes are written";
  ASSERT_TRUE(f->append(big.data(), big.size()));
  ASSERT_EQ(f->finish(), store::fill_failure::none);
  s.flush();
  u = s.current_usage();
  EXPECT_EQ(u.temp, 0u) << "published: counted once, as a blob";
  EXPECT_EQ(u.bytes, big.size());

  // Without an announced size the bytes count as they are written, and a failed
  // fill gives them back.
  const auto other = random_bytes(4096, 71);
  auto g = s.join_or_start(core::digest_of(other), "sha256", created);
  ASSERT_TRUE(g->start(std::nullopt, "application/octet-stream"));
  ASSERT_TRUE(g->append(other.data(), 1000));
  EXPECT_EQ(s.current_usage().temp, 1000u);
  g->fail(store::fill_failure::upstream_broken);
  EXPECT_EQ(s.current_usage().temp, 0u);
}

TEST(StoreOptions, TheLimitIsBytesOrAShareOfTheFilesystem) {
  store::store_options o;
  EXPECT_EQ(o.limit_for(1000), 0u) << "neither set: no limit";
  o.max_fraction = 0.8;
  EXPECT_EQ(o.limit_for(1000), 800u);
  o.max_bytes = 5;
  EXPECT_EQ(o.limit_for(1000), 5u) << "bytes win over a share";
}

namespace {

// Records what the store tells its observers, in order.
struct recorder final : store::observer {
  std::mutex mu;
  std::vector<std::string> events;
  void published(const std::string& d, std::uint64_t size) override {
    add("published " + d + " " + std::to_string(size));
  }
  void evicted(const std::string& d, std::uint64_t size) override { add("evicted " + d + " " + std::to_string(size)); }
  void invalidated(const std::string& d, std::string_view why) override {
    add("invalidated " + d + " " + std::string(why));
  }
  void add(std::string e) {
    std::lock_guard lock(mu);
    events.push_back(std::move(e));
  }
};

}  // namespace

TEST_F(store_test, ObserversHearOfEveryBlobPublishedEvictedOrInvalidated) {
  auto seen = std::make_shared<recorder>();
  store::store_options o;
  o.dir = dir_.string();
  store_ = std::make_unique<store::blob_store>(o, fault_, metrics_);
  store_->subscribe(seen);
  store_->open();
  auto& s = *store_;
  std::vector<std::string> digests;
  for (unsigned i = 0; i < 3; ++i) {
    const auto data = random_bytes(1000 + i, 80 + i);
    digests.push_back(core::digest_of(data));
    ASSERT_EQ(fill_with(digests.back(), data), store::fill_failure::none);
  }
  s.damaged(digests[0], "scripted");
  fs::remove(s.blob_path(digests[1]));
  EXPECT_FALSE(lookup(s, digests[1]));  // indexed, but its file is gone
  s.evict_to(0);
  s.flush();
  const std::vector<std::string> expected = {
      "published " + digests[0] + " 1000",      "published " + digests[1] + " 1001",
      "published " + digests[2] + " 1002",      "invalidated " + digests[0] + " damaged",
      "invalidated " + digests[1] + " missing", "evicted " + digests[2] + " 1002",
  };
  EXPECT_EQ(seen->events, expected);

  // A file the index lost is adopted at start-up: published, too.
  const auto data = random_bytes(500, 90);
  ASSERT_EQ(fill_with(core::digest_of(data), data), store::fill_failure::none);
  store_.reset();
  fs::remove_all(dir_ / "index");
  store_ = std::make_unique<store::blob_store>(o, fault_, metrics_);
  auto after = std::make_shared<recorder>();
  store_->subscribe(after);
  store_->open();
  EXPECT_EQ(store_->reconcile(), 1u);
  EXPECT_EQ(after->events, std::vector<std::string>{"published " + core::digest_of(data) + " 500"});
}

TEST_F(store_test, TheDurableStepsOfAPublishRunOffTheCallersThread) {
  auto& s = open();
  const auto data = random_bytes(4096, 95);
  const auto digest = core::digest_of(data);
  bool created = false;
  auto f = s.join_or_start(digest, "sha256", created);
  ASSERT_TRUE(f->start(data.size(), "application/octet-stream"));
  ASSERT_TRUE(f->append(data.data(), data.size()));
  ASSERT_EQ(f->finish(), store::fill_failure::none);
  EXPECT_TRUE(f->snapshot().verified) << "readers may have the last byte before the disk work is done";
  s.flush();
  ASSERT_TRUE(s.stat(digest));
  std::lock_guard lock(fault_->mu);
  ASSERT_EQ(fault_->durable_threads.size(), 3u);  // fsync, rename, directory fsync
  for (const auto& id : fault_->durable_threads) EXPECT_NE(id, std::this_thread::get_id());
}

TEST_F(store_test, EvictionFollowsAccessOrderAcrossARestart) {
  // The LRU order lives in memory; at start-up it is rebuilt from the index's last
  // accesses, so the oldest blob of the last run goes first.
  const auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::vector<std::string> digests;
  {
    open();
    for (unsigned i = 0; i < 3; ++i) {
      const auto data = random_bytes(1000, 100 + i);
      digests.push_back(core::digest_of(data));
      ASSERT_EQ(fill_with(digests.back(), data), store::fill_failure::none);
    }
  }
  store_.reset();
  // Last accesses as a previous run left them, in the reverse of the digests' order
  // (the order the index is read in): the greatest digest is the oldest.
  std::sort(digests.begin(), digests.end(), std::greater<>());
  {
    auto idx = store::index::open((dir_ / "index").string());
    for (unsigned i = 0; i < 3; ++i) {
      boost::system::error_code ec;
      auto e = idx->get(digests[i], ec);
      ASSERT_TRUE(e);
      e->last_access = now - 1000 + static_cast<std::int64_t>(i);
      ASSERT_TRUE(idx->put(digests[i], *e));
    }
  }
  auto& s = open();
  EXPECT_EQ(s.evict_to(2000), 1000u);
  EXPECT_FALSE(s.stat(digests[0]));
  EXPECT_TRUE(s.stat(digests[1]));
  EXPECT_EQ(s.evict_to(1000), 1000u);
  EXPECT_FALSE(s.stat(digests[1]));
  EXPECT_TRUE(s.stat(digests[2]));
}

TEST_F(store_test, AFollowerOfAPublishedFillIsSparedByEviction) {
  // A request that joined a fill just before its publish reads the published file
  // through the fill: it counts as a reader, as a hit does.
  auto& s = open();
  const auto data = random_bytes(8192, 110);
  const auto digest = core::digest_of(data);
  auto started = start_followed(data);
  auto& f = started.fill;
  auto& follower = started.follower;
  ASSERT_TRUE(f->append(data.data(), data.size()));
  ASSERT_EQ(f->finish(), store::fill_failure::none);
  f.reset();
  s.flush();
  ASSERT_TRUE(s.stat(digest));
  EXPECT_EQ(s.evict_to(0), 0u) << "the follower is still reading it";
  EXPECT_TRUE(s.stat(digest));
  follower.reset();
  EXPECT_EQ(s.evict_to(0), data.size());
  EXPECT_FALSE(s.stat(digest));
}

TEST_F(store_test, AnIndexThatCannotBeReadIsAnErrorNotAMiss) {
  auto fail_reads = std::make_shared<std::atomic<bool>>(false);
  store::store_options o;
  o.dir = dir_.string();
  store_ = std::make_unique<store::blob_store>(o, fault_, metrics_, berth::testing::faulting_index_opener(fail_reads));
  store_->open();
  auto& s = *store_;
  const auto data = random_bytes(2048, 120);
  const auto digest = core::digest_of(data);
  ASSERT_EQ(fill_with(digest, data), store::fill_failure::none);

  *fail_reads = true;
  boost::system::error_code ec;
  EXPECT_FALSE(s.lookup(digest, ec));
  EXPECT_TRUE(ec) << "a read error must not look like a miss";
  boost::system::error_code stat_ec;
  EXPECT_FALSE(s.stat(digest, &stat_ec));
  EXPECT_TRUE(stat_ec);
  EXPECT_NE(metrics_.serialize().find("berth_cache_index_errors_total 2"), std::string::npos);
  EXPECT_EQ(s.current_usage().blobs, 1u) << "nothing was dropped";

  *fail_reads = false;
  auto hit = lookup(s, digest);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->entry().size, data.size());
}

// --- Held chunks: bytes from a node that vouches for them, kept until checked ---

namespace {
constexpr std::uint64_t C = core::k_chunk_bytes;
}

TEST_F(store_test, HeldBytesAreNeverReadableUntilConfirmedAndDroppedOnesAreWrittenAgain) {
  open();
  const auto data = random_bytes(2 * C + 777, 41);
  auto started = start_followed(data);
  auto& f = started.fill;
  auto& body = started.follower;
  // Chunk 0: a first part as it comes, then the rest held from inside the chunk
  // (another source took over there), damaged, dropped, and sent right.
  ASSERT_TRUE(f->append(data.data(), 1000));
  std::string bad0 = data.substr(1000, C - 1000);
  bad0[5] = static_cast<char>(~bad0[5]);
  ASSERT_TRUE(f->append(bad0.data(), bad0.size(), true));
  EXPECT_EQ(f->held(), C - 1000);
  EXPECT_EQ(f->held_chunk(), 0u);
  EXPECT_EQ(f->snapshot().written, 1000u);
  EXPECT_NE(f->held_digest(), core::chunk_digest_of(std::string_view(data).substr(0, C)));
  f->drop_held();
  EXPECT_EQ(f->written(), 1000u) << "back where the holding began";
  ASSERT_TRUE(f->append(data.data() + 1000, C - 1000, true));
  EXPECT_EQ(f->held_digest(), core::chunk_digest_of(std::string_view(data).substr(0, C))) << "the whole chunk's hash";
  f->confirm_held();
  EXPECT_EQ(f->snapshot().written, C);
  // Chunk 1, damaged, held.
  std::string bad = data.substr(C, C);
  bad[12345] = static_cast<char>(~bad[12345]);
  ASSERT_TRUE(f->append(bad.data(), C / 2, true));
  EXPECT_THROW(f->append(bad.data() + C / 2, C / 2 + 1, true), std::logic_error) << "a held append crossed a chunk";
  ASSERT_TRUE(f->append(bad.data() + C / 2, C / 2, false)) << "while bytes are held, every append is held";
  EXPECT_EQ(f->held(), C);
  EXPECT_EQ(f->held_chunk(), 1u);
  EXPECT_EQ(f->snapshot().written, C) << "held bytes are not readable";
  EXPECT_NE(f->held_digest(), core::chunk_digest_of(std::string_view(data).substr(C, C)));
  EXPECT_EQ(f->chunk_digests().size(), 1u);
  f->drop_held();
  EXPECT_EQ(f->written(), C) << "back at the chunk's start";
  EXPECT_EQ(f->snapshot().written, C);
  // The right bytes, held and confirmed; then the rest.
  ASSERT_TRUE(f->append(data.data() + C, C, true));
  EXPECT_EQ(f->held_digest(), core::chunk_digest_of(std::string_view(data).substr(C, C)));
  f->confirm_held();
  EXPECT_EQ(f->snapshot().written, 2 * C);
  ASSERT_EQ(f->chunk_digests().size(), 2u);
  ASSERT_TRUE(f->append(data.data() + 2 * C, 777, true));
  EXPECT_EQ(f->snapshot().written, 2 * C) << "the short last chunk is held too";
  // The client read everything released, and never a byte of the damaged chunk.
  asio::io_context ctx;
  std::string got;
  bool clean = false;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        std::vector<char> buf(1 << 20);
        while (true) {
          boost::system::error_code ec;
          const auto n = co_await body->read(asio::buffer(buf), ec);
          if (ec || n == 0) {
            clean = !ec;
            co_return;
          }
          got.append(buf.data(), n);
          if (got.size() == 2 * C) {
            EXPECT_EQ(f->finish(), store::fill_failure::none) << "the rewound hasher verifies the right bytes";
          }
        }
      },
      asio::detached);
  ctx.run_for(std::chrono::seconds(10));
  EXPECT_TRUE(clean);
  EXPECT_TRUE(got == data) << "got " << got.size() << " bytes";
  store_->flush();
  const auto e = store_->stat(core::digest_of(data));
  ASSERT_TRUE(e);
  std::string hex;
  for (std::uint64_t at = 0; at < data.size(); at += C) {
    hex += core::to_hex(core::chunk_digest_of(std::string_view(data).substr(at, C)));
  }
  EXPECT_EQ(e->chunks, hex);
  EXPECT_EQ(f->chunk_digests().size(), 3u);
}

TEST_F(store_test, ABlobOfUnknownSizeWhoseLongerHeldTailWasDroppedIsPublishedAtItsTrueLength) {
  open();
  const auto data = random_bytes(C + 10, 44);
  bool created = false;
  auto f = store_->join_or_start(core::digest_of(data), "sha256", created);
  ASSERT_TRUE(f->start(std::nullopt, "application/octet-stream"));
  ASSERT_TRUE(f->append(data.data(), C));
  const std::string junk(100000, 'j');  // a source that sent more than the blob has
  ASSERT_TRUE(f->append(junk.data(), junk.size(), true));
  f->drop_held();
  ASSERT_TRUE(f->append(data.data() + C, 10, true));
  f->confirm_held();
  ASSERT_EQ(f->finish(), store::fill_failure::none);
  store_->flush();
  EXPECT_EQ(fs::file_size(store_->blob_path(core::digest_of(data))), data.size());
  EXPECT_EQ(read_all(core::digest_of(data)), data) << "a hit, not a blob dropped as damaged";
}

TEST_F(store_test, ABlobOfOneChunkKeepsNoChunkHashes) {
  open();
  const auto data = random_bytes(C, 42);
  ASSERT_EQ(fill_with(core::digest_of(data), data, 65536), store::fill_failure::none);
  ASSERT_TRUE(store_->stat(core::digest_of(data)));
  EXPECT_TRUE(store_->stat(core::digest_of(data))->chunks.empty());
}

TEST_F(store_test, AFillOfUnknownSizeClaimsEachByteOnceThoughItRewinds) {
  open(64 * C);
  const auto data = random_bytes(C + 10, 43);
  bool created = false;
  auto f = store_->join_or_start(core::digest_of(data), "sha256", created);
  ASSERT_TRUE(f->start(std::nullopt, "application/octet-stream"));
  ASSERT_TRUE(f->append(data.data(), C / 2, true));
  f->drop_held();
  ASSERT_TRUE(f->append(data.data(), C, true));
  f->confirm_held();
  EXPECT_EQ(store_->current_usage().temp, C);
  ASSERT_TRUE(f->append(data.data() + C, 10));
  EXPECT_EQ(f->finish(), store::fill_failure::none);
  store_->flush();
  EXPECT_EQ(store_->current_usage().temp, 0u);
  EXPECT_EQ(store_->current_usage().bytes, data.size());
}

TEST(StoreIndexRecord, ChunkHashesRoundTripAndADamagedListIsDroppedNotTheRecord) {
  store::blob_entry e;
  e.size = 10;
  e.media_type = "application/octet-stream";
  e.chunks = std::string(64, 'a');
  auto back = store::decode_entry(store::encode_entry(e));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->chunks, e.chunks);
  for (const auto* bad : {R"("abc")", R"("ABCDEFABCDEFABCDEFABCDEFABCDEFAB")", "7", R"("zz")"}) {
    const auto rec =
        std::string("\x02") + R"({"size":10,"created":1,"last_access":1,"media_type":"a/b","chunks":)" + bad + "}";
    auto d = store::decode_entry(rec);
    ASSERT_TRUE(d) << rec;
    EXPECT_TRUE(d->chunks.empty()) << rec;
  }
}
