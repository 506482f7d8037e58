#pragma once
// A body that fails when its source delivers less than `min_rate` bytes per second
// over any `period`. A read timeout catches a source that sends nothing; this
// catches one that trickles (a byte now and then keeps every read alive), which
// would otherwise hold a fill and all its clients for hours. The caller treats the
// failure like a stall: a fill resumes from a fresh connection with Range.
#include <chrono>
#include <memory>

#include "core/body_source.hpp"

namespace berth::core {

class min_rate_body final : public body_source {
 public:
  // `min_rate` 0 turns the check off.
  min_rate_body(std::unique_ptr<body_source> inner, std::uint64_t min_rate, std::chrono::milliseconds period);

  std::optional<std::uint64_t> size() const override { return inner_->size(); }
  boost::asio::awaitable<std::size_t> read(boost::asio::mutable_buffer buf, boost::system::error_code& ec) override;

 private:
  std::unique_ptr<body_source> inner_;
  std::uint64_t min_rate_;
  std::chrono::milliseconds period_;
  std::chrono::steady_clock::time_point window_start_;
  std::uint64_t window_bytes_ = 0;
};

}  // namespace berth::core
