#pragma once
// Wall-clock time as stored in records and compared across nodes.
#include <chrono>
#include <cstdint>

namespace berth::core {

inline std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace berth::core
