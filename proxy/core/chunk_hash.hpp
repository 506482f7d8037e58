#pragma once
// Chunk hashes: a blob cut into k_chunk_bytes pieces, each with a 128-bit XXH3 hash.
// The node that fetched a blob from the upstream computes them as the bytes arrive
// and keeps them with the blob; a node that fetches it from a peer checks each chunk
// before it lets its clients have it, so a peer's wrong bytes are caught mid-stream
// and the fill goes on from the chunk's start elsewhere. Not a security boundary (a
// peer that lies about its bytes can lie about its hashes): the blob's digest, checked
// at the end whatever the source, is that. XXH3 costs next to nothing beside sha256.
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace berth::core {

// Fixed for the cluster: every node cuts a blob the same way.
inline constexpr std::uint64_t k_chunk_bytes = 4 * 1024 * 1024;

using chunk_digest = std::array<unsigned char, 16>;

class chunk_hasher {
 public:
  chunk_hasher();
  ~chunk_hasher();
  chunk_hasher(chunk_hasher&&) noexcept;
  chunk_hasher& operator=(chunk_hasher&&) noexcept;

  void update(const void* data, std::size_t size);
  // A hasher in the same state (to go back to it later).
  chunk_hasher clone() const;
  // The hash of what was added since the last reset; the state is left as it was.
  chunk_digest digest() const;
  void reset();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// One-shot, for tests and tools.
chunk_digest chunk_digest_of(std::string_view data);

std::string to_hex(const chunk_digest& d);
std::optional<chunk_digest> chunk_digest_from_hex(std::string_view hex);
// A list of hashes as one hex string, one after another (how a blob's list is kept and
// sent), and back; nullopt when `hex` is not such a list.
std::string to_hex(std::span<const chunk_digest> list);
std::optional<std::vector<chunk_digest>> chunk_digests_from_hex(std::string_view hex);

}  // namespace berth::core
