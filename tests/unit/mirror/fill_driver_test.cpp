// The fill driver against a scripted blob source: it does not care where bytes
// come from, resumes from the byte reached, gives up after its backoffs, and never
// lets an exception escape.
#include "mirror/fill_driver.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>

#include "core/chunk_hash.hpp"
#include "core/hasher.hpp"
#include "metrics/metrics.hpp"
#include "mirror/blob_source.hpp"
#include "scripted_upstream.hpp"
#include "store/blob_store.hpp"

using namespace berth;
using namespace std::chrono_literals;

namespace {

class scripted_source final : public mirror::blob_source {
 public:
  std::string bytes;
  std::optional<std::size_t> first_cut;  // the first body breaks off here
  int ranges_that_work = 100;            // then fetch_range fails
  bool throw_on_fetch = false;
  std::optional<core::reply> refusal;
  std::vector<std::uint64_t> range_offsets;

  boost::asio::awaitable<mirror::blob_fetch> fetch() override {
    if (throw_on_fetch) throw std::runtime_error("scripted exception");
    mirror::blob_fetch f;
    if (refusal) {
      f.refusal = core::copy_of(*refusal);
      co_return f;
    }
    f.size = bytes.size();
    f.media_type = "application/octet-stream";
    f.body = std::make_unique<berth::testing::string_body>(bytes, first_cut, true);
    co_return f;
  }
  boost::asio::awaitable<std::unique_ptr<core::body_source>> fetch_range(std::uint64_t offset,
                                                                         std::optional<std::uint64_t>,
                                                                         std::string& problem) override {
    range_offsets.push_back(offset);
    if (ranges_that_work-- <= 0) {
      problem = "scripted refusal";
      co_return nullptr;
    }
    co_return std::make_unique<berth::testing::string_body>(bytes.substr(offset), std::nullopt, true);
  }
  std::string name() const override { return "scripted/source"; }
};

class fill_driver : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("berth-fill-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    store::store_options so;
    so.dir = dir_.string();
    store_ = std::make_unique<store::blob_store>(so, store::posix_filesystem(), metrics_);
    store_->open();
    options_.resume_backoff = {1ms, 1ms, 1ms};
    source_->bytes = std::string(300000, 'x');
    for (std::size_t i = 0; i < source_->bytes.size(); ++i) source_->bytes[i] = static_cast<char>(i * 7);
    digest_ = core::digest_of(source_->bytes, "sha256");
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::shared_ptr<store::fill> drive() {
    bool created = false;
    auto f = store_->join_or_start(digest_, "sha256", created);
    EXPECT_TRUE(created);
    boost::asio::co_spawn(ctx_, mirror::run_fill(f, source_, "registry.test/library/app", metrics_, options_),
                          [](std::exception_ptr e) { EXPECT_FALSE(e) << "run_fill let an exception escape"; });
    ctx_.run_for(10s);
    store_->flush();  // the publish runs on the store's disk thread
    return f;
  }

  boost::asio::io_context ctx_;
  metrics::registry metrics_;
  std::filesystem::path dir_;
  std::unique_ptr<store::blob_store> store_;
  mirror::mirror_options options_;
  std::shared_ptr<scripted_source> source_ = std::make_shared<scripted_source>();
  std::string digest_;
};

}  // namespace

TEST_F(fill_driver, AWholeBodyIsVerifiedAndPublished) {
  auto f = drive();
  EXPECT_TRUE(f->snapshot().verified);
  ASSERT_TRUE(store_->stat(digest_));
  EXPECT_EQ(store_->stat(digest_)->sources.at(0).name, "registry.test/library/app");
  EXPECT_TRUE(source_->range_offsets.empty());
}

TEST_F(fill_driver, ARefusalFailsTheFillWithTheAnswerEveryClientGets) {
  source_->refusal = core::error_reply({404, "BLOB_UNKNOWN", "scripted"});
  auto f = drive();
  EXPECT_EQ(f->snapshot().failure, store::fill_failure::upstream_answer);
  ASSERT_TRUE(f->answer());
  EXPECT_EQ(f->answer()->status, 404u);
  EXPECT_FALSE(store_->stat(digest_));
}

TEST_F(fill_driver, ACutIsContinuedFromTheByteReached) {
  source_->first_cut = 123457;
  auto f = drive();
  EXPECT_TRUE(f->snapshot().verified);
  ASSERT_EQ(source_->range_offsets.size(), 1u);
  EXPECT_EQ(source_->range_offsets[0], 123457u);
  EXPECT_TRUE(store_->stat(digest_));
}

TEST_F(fill_driver, ItGivesUpAfterItsLastBackoff) {
  source_->first_cut = 1000;
  source_->ranges_that_work = 0;
  auto f = drive();
  EXPECT_EQ(f->snapshot().failure, store::fill_failure::upstream_broken);
  EXPECT_EQ(source_->range_offsets.size(), options_.resume_backoff.size());
  EXPECT_FALSE(store_->stat(digest_));
}

TEST_F(fill_driver, AnExceptionFromTheSourceFailsTheFillAndGoesNoFurther) {
  source_->throw_on_fetch = true;
  auto f = drive();
  EXPECT_EQ(f->snapshot().failure, store::fill_failure::upstream_broken);
}

// --- Chunk checks: a source that vouches for its bytes chunk by chunk (another node) ---

namespace {

constexpr std::uint64_t C = core::k_chunk_bytes;

// Copies of one blob on several nodes, some damaged: fetch() reads the first, each
// fetch_range the next one. Each copy vouches with the hashes of the true blob.
class vouching_source final : public mirror::blob_source {
 public:
  std::string truth;
  std::vector<std::string> copies;               // copies[i]: what node i sends
  std::vector<std::optional<std::size_t>> cuts;  // where node i's body breaks off
  bool have_hashes = true;
  std::vector<bool> vouching;  // node i vouches (all do when empty)
  std::vector<std::uint64_t> range_offsets, wrong, passed, asked;
  bool rejected_called = false;

  boost::asio::awaitable<mirror::blob_fetch> fetch() override {
    mirror::blob_fetch f;
    f.size = truth.size();
    f.media_type = "application/octet-stream";
    f.body = body_from(0);
    co_return f;
  }
  boost::asio::awaitable<std::unique_ptr<core::body_source>> fetch_range(std::uint64_t offset,
                                                                         std::optional<std::uint64_t>,
                                                                         std::string& problem) override {
    range_offsets.push_back(offset);
    if (++node_ >= copies.size()) {
      problem = "no node left";
      co_return nullptr;
    }
    co_return body_from(offset);
  }
  std::string name() const override { return "node " + std::to_string(node_); }
  bool vouches() const override { return node_ >= vouching.size() || vouching[node_]; }
  boost::asio::awaitable<std::optional<core::chunk_digest>> chunk_hash(std::uint64_t index) override {
    asked.push_back(index);
    if (!have_hashes || index * C >= truth.size()) co_return std::nullopt;
    co_return core::chunk_digest_of(std::string_view(truth).substr(index * C, C));
  }
  void wrong_chunk(std::uint64_t index) override { wrong.push_back(index); }
  void passed_over(std::uint64_t index) override { passed.push_back(index); }
  void rejected() override { rejected_called = true; }

 private:
  std::unique_ptr<core::body_source> body_from(std::uint64_t offset) {
    std::optional<std::size_t> cut;
    if (node_ < cuts.size() && cuts[node_]) cut = *cuts[node_] - offset;
    return std::make_unique<berth::testing::string_body>(copies.at(node_).substr(offset), cut, true, 65536);
  }
  std::size_t node_ = 0;
};

class chunk_checks : public fill_driver {
 protected:
  void SetUp() override {
    fill_driver::SetUp();
    auto& truth = vouching_->truth;
    truth.resize(3 * C + 12345);
    for (std::size_t i = 0; i < truth.size(); ++i) truth[i] = static_cast<char>((i * 2654435761u) >> 13);
    digest_ = core::digest_of(truth, "sha256");
  }
  void TearDown() override {
    fill_.reset();  // before the store it belongs to
    fill_driver::TearDown();
  }
  // Node 0's copy with the byte at `at` inverted, then good copies.
  void damage_first_copy_at(std::size_t at) {
    auto bad = vouching_->truth;
    bad[at] = static_cast<char>(~bad[at]);
    vouching_->copies = {bad, vouching_->truth, vouching_->truth};
  }
  // Drives the fill with one client following it from the first byte, as a client of
  // this node would; returns what the client got and whether its body ended cleanly.
  std::pair<std::string, bool> drive_with_follower() {
    bool created = false;
    auto f = store_->join_or_start(digest_, "sha256", created);
    EXPECT_TRUE(created);
    std::string got;
    bool clean = false;
    boost::asio::co_spawn(ctx_, mirror::run_fill(f, vouching_, "registry.test/library/app", metrics_, options_),
                          boost::asio::detached);
    boost::asio::co_spawn(
        ctx_,
        [&]() -> boost::asio::awaitable<void> {
          co_await f->wait_answered(true, 5s);
          boost::system::error_code ec;
          const int fd = f->open_for_read(ec);
          EXPECT_FALSE(ec);
          auto body = store::fill_body(f, fd, 0, vouching_->truth.size(), 5s);
          std::vector<char> buf(100000);
          while (true) {
            const auto n = co_await body->read(boost::asio::buffer(buf), ec);
            if (ec) co_return;
            if (n == 0) break;
            got.append(buf.data(), n);
          }
          clean = true;
        },
        boost::asio::detached);
    ctx_.run_for(20s);
    store_->flush();
    fill_ = f;
    return {got, clean};
  }
  std::string metric(const std::string& series) const {
    const auto text = metrics_.serialize();
    const auto at = text.find(series + " ");
    return at == std::string::npos ? "absent"
                                   : text.substr(at + series.size() + 1, text.find('\n', at) - at - series.size() - 1);
  }
  std::string truth_chunks_hex() const {
    std::string hex;
    const auto& t = vouching_->truth;
    for (std::uint64_t at = 0; at < t.size(); at += C) hex += core::to_hex(core::chunk_digest_of(t.substr(at, C)));
    return hex;
  }

  std::shared_ptr<vouching_source> vouching_ = std::make_shared<vouching_source>();
  std::shared_ptr<store::fill> fill_;
};

}  // namespace

TEST_F(chunk_checks, AWrongByteIsCaughtBeforeAnyClientSeesItAndTheFillGoesOnFromItsChunksStart) {
  damage_first_copy_at(C + 1000);
  const auto [got, clean] = drive_with_follower();
  EXPECT_TRUE(clean) << "the client's body broke off";
  EXPECT_TRUE(got == vouching_->truth) << "the client got " << got.size() << " bytes, not the blob";
  EXPECT_EQ(vouching_->wrong, std::vector<std::uint64_t>{1});
  EXPECT_EQ(vouching_->range_offsets, std::vector<std::uint64_t>{C}) << "continued from the chunk's first byte";
  EXPECT_FALSE(vouching_->rejected_called);
  EXPECT_TRUE(fill_->snapshot().verified);
  const auto e = store_->stat(digest_);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->chunks, truth_chunks_hex()) << "the published blob keeps the chunk hashes of the true bytes";
  EXPECT_EQ(metric(R"(berth_peer_chunk_checks_total{result="mismatch"})"), "1");
  EXPECT_EQ(metric(R"(berth_peer_chunk_checks_total{result="match"})"), "4");
}

TEST_F(chunk_checks, AWrongByteInTheLastShortChunkIsCaughtToo) {
  damage_first_copy_at(vouching_->truth.size() - 3);
  const auto [got, clean] = drive_with_follower();
  EXPECT_TRUE(clean);
  EXPECT_TRUE(got == vouching_->truth);
  EXPECT_EQ(vouching_->wrong, std::vector<std::uint64_t>{3});
  EXPECT_EQ(vouching_->range_offsets, std::vector<std::uint64_t>{3 * C});
  EXPECT_TRUE(fill_->snapshot().verified);
}

TEST_F(chunk_checks, TwoLyingNodesInARowAreBothPassedOver) {
  auto bad1 = vouching_->truth, bad2 = vouching_->truth;
  bad1[10] = static_cast<char>(~bad1[10]);
  bad2[2 * C + 7] = static_cast<char>(~bad2[2 * C + 7]);
  vouching_->copies = {bad1, bad2, vouching_->truth};
  const auto [got, clean] = drive_with_follower();
  EXPECT_TRUE(clean);
  EXPECT_TRUE(got == vouching_->truth);
  EXPECT_EQ(vouching_->wrong, (std::vector<std::uint64_t>{0, 2}));
  EXPECT_EQ(vouching_->range_offsets, (std::vector<std::uint64_t>{0, 2 * C}));
}

TEST_F(chunk_checks, ABreakInsideAHeldChunkAsksForTheWholeChunkAgain) {
  vouching_->copies = {vouching_->truth, vouching_->truth};
  vouching_->cuts = {C + 5000};
  const auto [got, clean] = drive_with_follower();
  EXPECT_TRUE(clean);
  EXPECT_TRUE(got == vouching_->truth);
  EXPECT_TRUE(vouching_->wrong.empty());
  EXPECT_EQ(vouching_->range_offsets, std::vector<std::uint64_t>{C}) << "a chunk comes whole from one node";
}

TEST_F(chunk_checks, ANodeTakingOverInsideAChunkIsCheckedFromThereOn) {
  // Node 0 vouches for nothing (the upstream, or a node without a list) and breaks
  // inside chunk 1; node 1 takes over there with wrong bytes; node 2 is right.
  auto bad = vouching_->truth;
  bad[C + 9000] = static_cast<char>(~bad[C + 9000]);
  vouching_->copies = {vouching_->truth, bad, vouching_->truth};
  vouching_->vouching = {false, true, true};
  vouching_->cuts = {C + 5000};
  const auto [got, clean] = drive_with_follower();
  EXPECT_TRUE(clean);
  EXPECT_TRUE(got == vouching_->truth);
  EXPECT_EQ(vouching_->passed, std::vector<std::uint64_t>{1}) << "the rest of chunk 1 was held, checked, dropped";
  EXPECT_TRUE(vouching_->wrong.empty()) << "not blamed: the unchecked first part could have been the wrong one";
  EXPECT_EQ(vouching_->range_offsets, (std::vector<std::uint64_t>{C + 5000, C + 5000}))
      << "dropped back to where the holding began, not to bytes already released";
  EXPECT_TRUE(fill_->snapshot().verified);
}

TEST_F(chunk_checks, WhenTheUncheckedPartOfAChunkWasWrongNoNodeTakingOverIsBlamed) {
  // Node 0 (unchecked) sends a wrong byte early in chunk 1 and breaks later in it;
  // the right nodes that take over cannot make the chunk match, and are not blamed.
  auto bad = vouching_->truth;
  bad[C + 100] = static_cast<char>(~bad[C + 100]);
  vouching_->copies = {bad, vouching_->truth, vouching_->truth};
  vouching_->vouching = {false, true, true};
  vouching_->cuts = {C + 5000};
  const auto [got, clean] = drive_with_follower();
  EXPECT_FALSE(clean) << "the client had a wrong byte: its body must not end cleanly";
  EXPECT_TRUE(vouching_->wrong.empty());
  EXPECT_EQ(vouching_->passed, (std::vector<std::uint64_t>{1, 1}));
  EXPECT_NE(fill_->snapshot().failure, store::fill_failure::none);
  EXPECT_FALSE(store_->stat(digest_));
}

TEST_F(chunk_checks, ABlobOfOneChunkIsCheckedByItsDigestAndGoesOnElsewhere) {
  // No peer keeps a list for a blob of one chunk: the digest is its check, before the
  // last byte goes out, and a wrong copy is dropped like a wrong chunk.
  auto& truth = vouching_->truth;
  truth.resize(300000);
  digest_ = core::digest_of(truth, "sha256");
  damage_first_copy_at(1234);
  vouching_->have_hashes = false;
  const auto [got, clean] = drive_with_follower();
  EXPECT_TRUE(clean);
  EXPECT_TRUE(got == truth);
  EXPECT_EQ(vouching_->wrong, std::vector<std::uint64_t>{0});
  EXPECT_EQ(vouching_->range_offsets, std::vector<std::uint64_t>{0});
  EXPECT_EQ(vouching_->asked, std::vector<std::uint64_t>{0}) << "asked for a list only when the digest failed";
  EXPECT_TRUE(fill_->snapshot().verified);
  EXPECT_EQ(metric(R"(berth_peer_chunk_checks_total{result="match"})"), "1");
}

TEST_F(chunk_checks, WithoutHashesTheDigestStillDecidesAndTheClientNeverGetsTheWholeWrongBlob) {
  damage_first_copy_at(C + 1000);
  vouching_->have_hashes = false;
  const auto [got, clean] = drive_with_follower();
  EXPECT_FALSE(clean) << "a body that does not verify must not end cleanly";
  EXPECT_LT(got.size(), vouching_->truth.size());
  EXPECT_TRUE(vouching_->rejected_called);
  EXPECT_EQ(fill_->snapshot().failure, store::fill_failure::digest_mismatch);
  EXPECT_FALSE(store_->stat(digest_));
  EXPECT_EQ(metric(R"(berth_peer_chunk_checks_total{result="unchecked"})"), "4");
}

TEST_F(chunk_checks, NodesThatKeepLyingEndInAFailedFillNotALoop) {
  auto bad = vouching_->truth;
  bad[5] = static_cast<char>(~bad[5]);
  vouching_->copies.assign(20, bad);
  const auto [got, clean] = drive_with_follower();
  EXPECT_FALSE(clean);
  EXPECT_TRUE(got.empty()) << "nothing of a chunk that never matched was released";
  EXPECT_EQ(fill_->snapshot().failure, store::fill_failure::upstream_broken);
  EXPECT_FALSE(store_->stat(digest_));
}
