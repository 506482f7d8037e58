#pragma once
// Options for the blob cache, filled by config/ (the `cache:` section).
#include <chrono>
#include <cstdint>
#include <string>

namespace berth::store {

struct store_options {
  std::string dir;                                // where blobs, temp files and the index live
  std::uint64_t max_bytes = 0;                    // 0: no limit
  double max_fraction = 0;                        // instead of max_bytes: a fraction of the filesystem (0.8 = "80%")
  double low_watermark = 0.85;                    // eviction goes down to max * low_watermark
  std::chrono::milliseconds reader_stall{60000};  // a reader gives up on a fill that makes no progress
  // How long the upstream's word that a repository may have a cached blob holds; the
  // next hit after that asks again (one HEAD), so a revoked grant reaches the cache.
  std::chrono::milliseconds authorization_ttl{300000};

  // The limit in bytes on a filesystem of `capacity` bytes; 0: none. The one place
  // max_size becomes a number (the cache and `berth cache stats` both use it).
  std::uint64_t limit_for(std::uint64_t capacity) const {
    if (max_bytes > 0) return max_bytes;
    if (max_fraction > 0) return static_cast<std::uint64_t>(static_cast<double>(capacity) * max_fraction);
    return 0;
  }
};

}  // namespace berth::store
