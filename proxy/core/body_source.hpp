#pragma once
// A response body that arrives over time (an upstream stream today, a cache file
// tomorrow). The session pulls from it into its own fixed buffer, so nothing ever
// holds a whole blob. Owned by exactly one session coroutine.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace berth::core {

// A body that is a span of an open file: the session may send it with sendfile(2).
struct file_span {
  int fd = -1;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

class body_source {
 public:
  virtual ~body_source() = default;
  // Reads up to buffer_size(buf) bytes. Returns 0 with no error at the end of the
  // body; an error means the body is broken and the client connection must be cut.
  virtual boost::asio::awaitable<std::size_t> read(boost::asio::mutable_buffer buf, boost::system::error_code& ec) = 0;
  // The exact body length if known in advance.
  virtual std::optional<std::uint64_t> size() const = 0;
  // The file span behind the body, when it is one (a cache hit); nullopt otherwise.
  virtual std::optional<file_span> file() const { return std::nullopt; }
  // Tells a file-backed body that the session sent `n` of its bytes itself.
  virtual void sent(std::uint64_t n) { (void)n; }
};

}  // namespace berth::core
