#pragma once
// A body that checks its digest while it streams, so that a client never receives
// the whole of a wrong blob: the bytes that complete the body are released only
// after everything has hashed to the expected digest (and, when the length is
// known, exactly that many bytes arrived). On a mismatch the read fails and the
// session cuts the connection, so the client sees a short body and retries.
//
// The length may be unknown (an upstream that answers chunked or close-delimited):
// the body then holds back the last byte it has read until its source reports the
// end. Owned by one session coroutine, like every body_source.
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/body_source.hpp"
#include "core/hasher.hpp"

namespace berth::core {

class verifying_body final : public body_source {
 public:
  // Called once with the digest the bytes actually hashed to.
  using mismatch_fn = std::function<void(const std::string& got)>;

  // `expected` is "<algorithm>:<hex>". `size` is this body's length if known.
  // `prefix`, when given, has already hashed the bytes of the blob that precede
  // this body (a continuation after a resume); it must use expected's algorithm.
  verifying_body(std::unique_ptr<body_source> inner, std::string expected, std::optional<std::uint64_t> size,
                 mismatch_fn on_mismatch, std::optional<hasher> prefix = std::nullopt);

  std::optional<std::uint64_t> size() const override { return size_; }
  boost::asio::awaitable<std::size_t> read(boost::asio::mutable_buffer buf, boost::system::error_code& ec) override;

 private:
  bool verified(boost::system::error_code& ec);
  boost::asio::awaitable<std::size_t> read_sized(boost::asio::mutable_buffer buf, boost::system::error_code& ec);
  boost::asio::awaitable<std::size_t> read_unsized(boost::asio::mutable_buffer buf, boost::system::error_code& ec);

  std::unique_ptr<body_source> inner_;
  std::string expected_;
  std::optional<std::uint64_t> size_;
  mismatch_fn on_mismatch_;
  hasher hasher_;
  std::uint64_t seen_ = 0;
  bool done_ = false;
  // Unknown length: the last byte read, not yet given out.
  bool holding_ = false;
  char held_ = 0;
};

}  // namespace berth::core
