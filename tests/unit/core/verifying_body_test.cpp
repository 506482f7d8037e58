#include "core/verifying_body.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <deque>

#include "core/min_rate_body.hpp"

using namespace berth;
namespace asio = boost::asio;

namespace {

// A source that hands out scripted pieces, one per read (as a chunked upstream
// body does), then the end.
class scripted_source final : public core::body_source {
 public:
  explicit scripted_source(std::deque<std::string> pieces, std::optional<std::uint64_t> size = std::nullopt,
                           std::chrono::milliseconds delay = {})
      : pieces_(std::move(pieces)), size_(size), delay_(delay) {}
  std::optional<std::uint64_t> size() const override { return size_; }
  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, boost::system::error_code& ec) override {
    ec = {};
    if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    if (pieces_.empty()) co_return 0;
    auto& p = pieces_.front();
    const auto n = std::min(p.size(), buf.size());
    std::memcpy(buf.data(), p.data(), n);
    p.erase(0, n);
    if (p.empty()) pieces_.pop_front();
    co_return n;
  }

 private:
  std::deque<std::string> pieces_;
  std::optional<std::uint64_t> size_;
  std::chrono::milliseconds delay_;
};

struct drained {
  std::string bytes;
  bool ended = false;  // the body ended cleanly (read returned 0 without error)
  boost::system::error_code ec;
};

drained drain(core::body_source& body, std::size_t buffer = 7) {
  asio::io_context ctx;
  drained out;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        std::string buf(buffer, '\0');
        while (true) {
          const auto n = co_await body.read(asio::buffer(buf.data(), buf.size()), out.ec);
          if (out.ec) co_return;
          if (n == 0) {
            out.ended = true;
            co_return;
          }
          out.bytes.append(buf.data(), n);
        }
      },
      asio::detached);
  ctx.run();
  return out;
}

const std::string k_blob = "the quick brown fox jumps over the lazy dog, twice over";

std::deque<std::string> pieces(const std::string& s, std::size_t n) {
  std::deque<std::string> out;
  for (std::size_t i = 0; i < s.size(); i += n) out.push_back(s.substr(i, n));
  return out;
}

}  // namespace

TEST(VerifyingBody, UnsizedRightBytesArriveWhole) {
  for (std::size_t piece : {1, 2, 5, 64}) {
    core::verifying_body body(std::make_unique<scripted_source>(pieces(k_blob, piece)), core::digest_of(k_blob),
                              std::nullopt, nullptr);
    EXPECT_FALSE(body.size());
    const auto got = drain(body);
    EXPECT_TRUE(got.ended) << piece;
    EXPECT_EQ(got.bytes, k_blob) << piece;
  }
}

TEST(VerifyingBody, UnsizedWrongBytesNeverArriveWhole) {
  for (std::size_t at : {std::size_t{0}, k_blob.size() / 2, k_blob.size() - 1}) {
    std::string wrong = k_blob;
    wrong[at] ^= 1;
    std::string got_digest;
    core::verifying_body body(std::make_unique<scripted_source>(pieces(wrong, 3)), core::digest_of(k_blob),
                              std::nullopt, [&](const std::string& got) { got_digest = got; });
    const auto got = drain(body, 4);
    EXPECT_FALSE(got.ended) << at;
    EXPECT_TRUE(got.ec) << at;
    EXPECT_LT(got.bytes.size(), wrong.size()) << "the last byte is held back: " << at;
    EXPECT_EQ(got_digest, core::digest_of(wrong));
  }
}

TEST(VerifyingBody, EmptyBodiesAreCheckedToo) {
  core::verifying_body right(std::make_unique<scripted_source>(std::deque<std::string>{}), core::digest_of(""),
                             std::nullopt, nullptr);
  EXPECT_TRUE(drain(right).ended);
  core::verifying_body wrong(std::make_unique<scripted_source>(std::deque<std::string>{}), core::digest_of("x"),
                             std::nullopt, nullptr);
  EXPECT_FALSE(drain(wrong).ended);
  core::verifying_body sized(std::make_unique<scripted_source>(std::deque<std::string>{}), core::digest_of("x"), 0,
                             nullptr);
  EXPECT_FALSE(drain(sized).ended);
}

TEST(VerifyingBody, SizedBodiesWithholdTheReadThatCompletesAWrongBlob) {
  std::string wrong = k_blob;
  wrong.back() ^= 1;
  core::verifying_body body(std::make_unique<scripted_source>(pieces(wrong, 10)), core::digest_of(k_blob), wrong.size(),
                            nullptr);
  const auto got = drain(body, 10);
  EXPECT_FALSE(got.ended);
  EXPECT_LT(got.bytes.size(), wrong.size());
}

TEST(VerifyingBody, SizedBodyThatEndsEarlyIsAnError) {
  core::verifying_body body(std::make_unique<scripted_source>(pieces(k_blob.substr(0, 10), 3)), core::digest_of(k_blob),
                            k_blob.size(), nullptr);
  const auto got = drain(body);
  EXPECT_FALSE(got.ended);
  EXPECT_EQ(got.bytes, k_blob.substr(0, 10));
}

TEST(VerifyingBody, AContinuationIsCheckedWithItsPrefix) {
  const auto split = k_blob.size() / 3;
  core::hasher prefix("sha256");
  prefix.update(k_blob.substr(0, split));
  core::verifying_body right(std::make_unique<scripted_source>(pieces(k_blob.substr(split), 4)),
                             core::digest_of(k_blob), std::nullopt, nullptr, std::move(prefix));
  const auto got = drain(right);
  EXPECT_TRUE(got.ended);
  EXPECT_EQ(got.bytes, k_blob.substr(split));

  core::hasher bad_prefix("sha256");
  bad_prefix.update("not the prefix");
  core::verifying_body wrong(std::make_unique<scripted_source>(pieces(k_blob.substr(split), 4)),
                             core::digest_of(k_blob), std::nullopt, nullptr, std::move(bad_prefix));
  EXPECT_FALSE(drain(wrong).ended);
}

TEST(MinRateBody, ATricklingSourceIsGivenUp) {
  // 20 reads of 1 byte, 20 ms apart: 50 B/s against a floor of 1000 B/s over 100 ms.
  core::min_rate_body slow(
      std::make_unique<scripted_source>(pieces(std::string(20, 'x'), 1), std::nullopt, std::chrono::milliseconds(20)),
      1000, std::chrono::milliseconds(100));
  const auto got = drain(slow);
  EXPECT_FALSE(got.ended);
  EXPECT_EQ(got.ec, boost::system::errc::timed_out);
  EXPECT_LT(got.bytes.size(), 20u);

  core::min_rate_body fast(
      std::make_unique<scripted_source>(pieces(std::string(20, 'x'), 1), std::nullopt, std::chrono::milliseconds(20)),
      10, std::chrono::milliseconds(100));
  EXPECT_TRUE(drain(fast).ended);
  core::min_rate_body off(
      std::make_unique<scripted_source>(pieces(std::string(20, 'x'), 1), std::nullopt, std::chrono::milliseconds(20)),
      0, std::chrono::milliseconds(100));
  EXPECT_TRUE(drain(off).ended);
}
