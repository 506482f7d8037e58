#pragma once
// Incremental sha256/sha512 over OpenSSL EVP. Owned by one coroutine; not thread-safe.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace berth::core {

class hasher {
 public:
  // `algorithm` is "sha256" or "sha512" (what parse_digest accepts).
  explicit hasher(std::string_view algorithm = "sha256");
  ~hasher();
  hasher(hasher&&) noexcept;
  hasher& operator=(hasher&&) noexcept;

  void update(const void* data, std::size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // A hasher in the same state (to go back to it later).
  hasher clone() const;
  // "sha256:<hex>". Call once.
  std::string finish();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// One-shot digest of a buffer, "sha256:<hex>".
std::string digest_of(std::string_view data, std::string_view algorithm = "sha256");

// HMAC-SHA256 of `data` under `key`, as lower-case hex.
std::string hmac_sha256_hex(std::string_view key, std::string_view data);
// Equality that takes the same time wherever the first difference is (for secrets
// and signatures).
bool constant_time_equal(std::string_view a, std::string_view b);

// Base64 (standard alphabet, padded) over OpenSSL EVP.
std::string base64_encode(std::string_view data);
// Returns false on malformed input.
bool base64_decode(std::string_view text, std::string& out);

}  // namespace berth::core
