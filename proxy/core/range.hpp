#pragma once
// The Range request header, as far as Berth serves it from the cache: one range,
// `bytes=N-` or `bytes=N-M` (what containerd sends to resume). Anything else
// (several ranges, a suffix range, a malformed header) is "no usable range" and the
// whole blob is served, as RFC 9110 allows.
#include <cstdint>
#include <optional>
#include <string_view>

namespace berth::core {

struct byte_range {
  std::uint64_t first = 0;
  std::optional<std::uint64_t> last;  // inclusive; absent: to the end
};

std::optional<byte_range> parse_byte_range(std::string_view header);

}  // namespace berth::core
