// The fill driver against a scripted blob source: it does not care where bytes
// come from, resumes from the byte reached, gives up after its backoffs, and never
// lets an exception escape.
#include "mirror/fill_driver.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>

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
