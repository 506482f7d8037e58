#include "core/range.hpp"

namespace berth::core {

namespace {
// At most 19 digits: the value always fits in 64 bits.
bool number(std::string_view v, std::uint64_t& out) {
  if (v.empty() || v.size() > 19) return false;
  out = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return true;
}
}  // namespace

std::optional<byte_range> parse_byte_range(std::string_view header) {
  constexpr std::string_view prefix = "bytes=";
  if (!header.starts_with(prefix)) return std::nullopt;
  const std::string_view spec = header.substr(prefix.size());
  if (spec.find(',') != std::string_view::npos) return std::nullopt;  // several ranges: serve the whole blob
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos || dash == 0) return std::nullopt;  // suffix ranges are not used by clients here
  byte_range r;
  if (!number(spec.substr(0, dash), r.first)) return std::nullopt;
  if (dash + 1 < spec.size()) {
    std::uint64_t last = 0;
    if (!number(spec.substr(dash + 1), last) || last < r.first) return std::nullopt;
    r.last = last;
  }
  return r;
}

}  // namespace berth::core
