#include "core/min_rate_body.hpp"

#include <boost/system/errc.hpp>

namespace berth::core {

namespace asio = boost::asio;
using boost::system::error_code;

min_rate_body::min_rate_body(std::unique_ptr<body_source> inner, std::uint64_t min_rate,
                             std::chrono::milliseconds period)
    : inner_(std::move(inner)), min_rate_(min_rate), period_(period), window_start_(std::chrono::steady_clock::now()) {}

asio::awaitable<std::size_t> min_rate_body::read(asio::mutable_buffer buf, error_code& ec) {
  const auto n = co_await inner_->read(buf, ec);
  if (ec || n == 0 || min_rate_ == 0) co_return n;
  window_bytes_ += n;
  const auto now = std::chrono::steady_clock::now();
  const auto elapsed = now - window_start_;
  if (elapsed >= period_) {
    const double seconds = std::chrono::duration<double>(elapsed).count();
    if (static_cast<double>(window_bytes_) < static_cast<double>(min_rate_) * seconds) {
      // Slower than the floor for a whole period: give up on this source.
      ec = boost::system::errc::make_error_code(boost::system::errc::timed_out);
      co_return 0;
    }
    window_start_ = now;
    window_bytes_ = 0;
  }
  co_return n;
}

}  // namespace berth::core
