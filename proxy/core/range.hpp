#pragma once
// The Range request header (RFC 9110 14.2), as far as Berth serves it from the
// cache: one range, `bytes=N-`, `bytes=N-M` (what containerd sends to resume) or a
// suffix `bytes=-N` (the last N bytes, how lazy-pulling clients read a layer's
// footer). For several ranges the first is served, alone, as a single-part 206: the
// client learns which bytes it got from Content-Range. A malformed header is "no
// usable range" and the whole blob is served, as RFC 9110 allows.
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace berth::core {

struct byte_range {
  std::uint64_t first = 0;
  std::optional<std::uint64_t> last;    // inclusive; absent: to the end
  std::optional<std::uint64_t> suffix;  // bytes=-N: the last N bytes (first and last unused)
  bool more = false;                    // the header named further ranges (not served)

  // [begin, end) of a body of `size` bytes; nullopt when unsatisfiable (416).
  std::optional<std::pair<std::uint64_t, std::uint64_t>> resolve(std::uint64_t size) const;
};

std::optional<byte_range> parse_byte_range(std::string_view header);

}  // namespace berth::core
