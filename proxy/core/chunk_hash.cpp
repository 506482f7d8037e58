#include "core/chunk_hash.hpp"

#include <cstring>
#include <new>

// Header-only: nothing to link, nothing more in the image.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace berth::core {

struct chunk_hasher::impl {
  XXH3_state_t* state = XXH3_createState();
  ~impl() { XXH3_freeState(state); }
  impl() {
    if (state == nullptr) throw std::bad_alloc();
    XXH3_128bits_reset(state);
  }
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;
};

chunk_hasher::chunk_hasher() : impl_(std::make_unique<impl>()) {}
chunk_hasher::~chunk_hasher() = default;
chunk_hasher::chunk_hasher(chunk_hasher&&) noexcept = default;
chunk_hasher& chunk_hasher::operator=(chunk_hasher&&) noexcept = default;

chunk_hasher chunk_hasher::clone() const {
  chunk_hasher out;
  XXH3_copyState(out.impl_->state, impl_->state);
  return out;
}

void chunk_hasher::update(const void* data, std::size_t size) {
  XXH3_128bits_update(impl_->state, data, size);
}

namespace {
chunk_digest canonical(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  chunk_digest out{};
  static_assert(sizeof(c.digest) == out.size());
  std::memcpy(out.data(), c.digest, out.size());
  return out;
}
}  // namespace

chunk_digest chunk_hasher::digest() const {
  return canonical(XXH3_128bits_digest(impl_->state));
}

void chunk_hasher::reset() {
  XXH3_128bits_reset(impl_->state);
}

chunk_digest chunk_digest_of(std::string_view data) {
  return canonical(XXH3_128bits(data.data(), data.size()));
}

std::string to_hex(const chunk_digest& d) {
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * d.size());
  for (const unsigned char c : d) {
    out.push_back(k_hex[c >> 4]);
    out.push_back(k_hex[c & 0xf]);
  }
  return out;
}

std::optional<chunk_digest> chunk_digest_from_hex(std::string_view hex) {
  chunk_digest out{};
  if (hex.size() != 2 * out.size()) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return out;
}

std::string to_hex(std::span<const chunk_digest> list) {
  std::string out;
  out.reserve(list.size() * 2 * sizeof(chunk_digest));
  for (const auto& d : list) out += to_hex(d);
  return out;
}

std::optional<std::vector<chunk_digest>> chunk_digests_from_hex(std::string_view hex) {
  constexpr std::size_t width = 2 * sizeof(chunk_digest);
  if (hex.size() % width != 0) return std::nullopt;
  std::vector<chunk_digest> out;
  out.reserve(hex.size() / width);
  for (std::size_t at = 0; at < hex.size(); at += width) {
    auto d = chunk_digest_from_hex(hex.substr(at, width));
    if (!d) return std::nullopt;
    out.push_back(*d);
  }
  return out;
}

}  // namespace berth::core
