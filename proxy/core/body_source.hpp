#pragma once
// A response body that arrives over time (an upstream stream today, a cache file
// tomorrow). The session pulls from it into its own fixed buffer, so nothing ever
// holds a whole blob. Owned by exactly one session coroutine.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <optional>

namespace berth::core {

class body_source {
 public:
  virtual ~body_source() = default;
  // Reads up to buffer_size(buf) bytes. Returns 0 with no error at the end of the
  // body; an error means the body is broken and the client connection must be cut.
  virtual boost::asio::awaitable<std::size_t> read(boost::asio::mutable_buffer buf, boost::system::error_code& ec) = 0;
  // The exact body length if known in advance.
  virtual std::optional<std::uint64_t> size() const = 0;
};

}  // namespace berth::core
