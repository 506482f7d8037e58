#pragma once
// The mirror's limits, filled by main from the config. Defaults are the documented ones.
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace berth::mirror {

struct mirror_options {
  // containerd rejects manifests over 4*1048*1048 bytes; so do we.
  std::size_t max_manifest_bytes = 4 * 1048 * 1048;
  std::size_t max_error_body_bytes = 64 * 1024;
  std::size_t max_tags_body_bytes = 16 * 1024 * 1024;
  // A client following a fill gives up when the fill makes no progress this long.
  std::chrono::milliseconds fill_stall{60000};
  // Blob bodies from the upstream slower than this (bytes/s over a period) are given up.
  std::uint64_t min_rate = 0;
  std::chrono::milliseconds min_rate_period{30000};
  // A fill whose body breaks off is continued with Range this many times, after these pauses.
  std::array<std::chrono::milliseconds, 3> resume_backoff{
      std::chrono::milliseconds(100), std::chrono::milliseconds(500), std::chrono::milliseconds(2000)};
  // How long a repository's confirmation for a cached blob holds (cache.authorization_ttl).
  std::chrono::milliseconds authorization_ttl{300000};
};

}  // namespace berth::mirror
