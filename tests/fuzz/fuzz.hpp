#pragma once
// Shared by the libFuzzer targets: the input as a string_view, and a check that
// fails loudly (a crash is what libFuzzer reports).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace berth::fuzz {

inline std::string_view text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// An invariant the parser promises; libFuzzer keeps the input that breaks it.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace berth::fuzz
