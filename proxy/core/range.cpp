#include "core/range.hpp"

#include <algorithm>

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

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}
}  // namespace

std::optional<std::pair<std::uint64_t, std::uint64_t>> byte_range::resolve(std::uint64_t size) const {
  if (suffix) {
    if (*suffix == 0 || size == 0) return std::nullopt;
    return std::pair{size - std::min(*suffix, size), size};
  }
  if (first >= size) return std::nullopt;
  return std::pair{first, last ? std::min(*last + 1, size) : size};
}

std::optional<byte_range> parse_byte_range(std::string_view header) {
  constexpr std::string_view prefix = "bytes=";
  if (!header.starts_with(prefix)) return std::nullopt;
  std::string_view spec = header.substr(prefix.size());
  byte_range r;
  if (const auto comma = spec.find(','); comma != std::string_view::npos) {
    r.more = true;
    spec = spec.substr(0, comma);
  }
  spec = trim(spec);
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  if (dash == 0) {
    std::uint64_t n = 0;
    if (!number(spec.substr(1), n)) return std::nullopt;
    r.suffix = n;
    return r;
  }
  if (!number(spec.substr(0, dash), r.first)) return std::nullopt;
  if (dash + 1 < spec.size()) {
    std::uint64_t last = 0;
    if (!number(spec.substr(dash + 1), last) || last < r.first) return std::nullopt;
    r.last = last;
  }
  return r;
}

}  // namespace berth::core
