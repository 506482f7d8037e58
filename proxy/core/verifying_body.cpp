#include "core/verifying_body.hpp"

#include <boost/system/errc.hpp>
#include <cstring>

namespace berth::core {

namespace asio = boost::asio;
using boost::system::error_code;
namespace errc = boost::system::errc;

verifying_body::verifying_body(std::unique_ptr<body_source> inner, std::string expected,
                               std::optional<std::uint64_t> size, mismatch_fn on_mismatch, std::optional<hasher> prefix)
    : inner_(std::move(inner)),
      expected_(std::move(expected)),
      size_(size),
      on_mismatch_(std::move(on_mismatch)),
      hasher_(prefix ? std::move(*prefix) : hasher(expected_.substr(0, expected_.find(':')))) {}

bool verifying_body::verified(error_code& ec) {
  const auto got = hasher_.finish();
  if (got == expected_) return true;
  if (on_mismatch_) on_mismatch_(got);
  ec = errc::make_error_code(errc::protocol_error);
  return false;
}

asio::awaitable<std::size_t> verifying_body::read(asio::mutable_buffer buf, error_code& ec) {
  ec = {};
  if (done_) co_return 0;
  if (size_) {
    co_return co_await read_sized(buf, ec);
  }
  co_return co_await read_unsized(buf, ec);
}

// The length is known: the read that reaches it is withheld unless the hash matches.
asio::awaitable<std::size_t> verifying_body::read_sized(asio::mutable_buffer buf, error_code& ec) {
  if (seen_ == *size_) {
    // An empty body (or a caller reading past the end): verify once.
    done_ = true;
    if (seen_ == 0 && !verified(ec)) co_return 0;
    co_return 0;
  }
  const auto room = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), *size_ - seen_));
  const auto n = co_await inner_->read(asio::buffer(buf.data(), room), ec);
  if (ec) co_return 0;
  if (n == 0) {
    ec = errc::make_error_code(errc::connection_aborted);  // ended before the announced length
    co_return 0;
  }
  hasher_.update(buf.data(), n);
  seen_ += n;
  if (seen_ == *size_) {
    done_ = true;
    if (!verified(ec)) co_return 0;
  }
  co_return n;
}

// The length is unknown: keep the last byte read back until the source ends and
// the hash matches. Every read gives out what came in minus that one byte.
asio::awaitable<std::size_t> verifying_body::read_unsized(asio::mutable_buffer buf, error_code& ec) {
  auto* out = static_cast<char*>(buf.data());
  if (buf.size() < 2) {
    ec = errc::make_error_code(errc::no_buffer_space);
    co_return 0;
  }
  while (true) {
    std::size_t off = 0;
    if (holding_) out[off++] = held_;
    const auto n = co_await inner_->read(asio::buffer(out + off, buf.size() - off), ec);
    if (ec) co_return 0;
    if (n == 0) {
      done_ = true;
      if (!verified(ec)) co_return 0;
      holding_ = false;
      co_return off;  // the held byte: the body is complete and proven
    }
    hasher_.update(out + off, n);
    seen_ += n;
    const std::size_t total = off + n;
    held_ = out[total - 1];
    holding_ = true;
    if (total > 1) co_return total - 1;
    // Only the byte we must hold came in: read on.
  }
}

}  // namespace berth::core
