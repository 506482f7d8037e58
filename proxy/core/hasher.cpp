#include "core/hasher.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdexcept>

namespace berth::core {

struct hasher::impl {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::string algorithm;
  ~impl() { EVP_MD_CTX_free(ctx); }
};

hasher::hasher(std::string_view algorithm) : impl_(std::make_unique<impl>()) {
  impl_->algorithm = std::string(algorithm);
  const EVP_MD* md = algorithm == "sha512" ? EVP_sha512() : EVP_sha256();
  if (impl_->ctx == nullptr || EVP_DigestInit_ex(impl_->ctx, md, nullptr) != 1) {
    throw std::runtime_error("EVP_DigestInit_ex failed");
  }
}
hasher::~hasher() = default;
hasher::hasher(hasher&&) noexcept = default;
hasher& hasher::operator=(hasher&&) noexcept = default;

hasher hasher::clone() const {
  hasher out(impl_->algorithm);
  if (EVP_MD_CTX_copy_ex(out.impl_->ctx, impl_->ctx) != 1) throw std::runtime_error("EVP_MD_CTX_copy_ex failed");
  return out;
}

void hasher::update(const void* data, std::size_t size) {
  EVP_DigestUpdate(impl_->ctx, data, size);
}

std::string hasher::finish() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(impl_->ctx, md, &len);
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out = impl_->algorithm + ":";
  out.reserve(out.size() + 2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(k_hex[md[i] >> 4]);
    out.push_back(k_hex[md[i] & 0xf]);
  }
  return out;
}

std::string digest_of(std::string_view data, std::string_view algorithm) {
  hasher h(algorithm);
  h.update(data);
  return h.finish();
}

std::string base64_encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
           data.size(), mac, &len) == nullptr) {
    throw std::runtime_error("HMAC failed");
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned i = 0; i < len; ++i) {
    out += hex[mac[i] >> 4];
    out += hex[mac[i] & 15];
  }
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool base64_decode(std::string_view text, std::string& out) {
  // EVP_DecodeBlock does not reject bad padding placement well and keeps pad
  // bytes in its output length, so use the streaming decoder.
  std::string buf(3 * (text.size() / 4 + 1), '\0');
  EVP_ENCODE_CTX* ctx = EVP_ENCODE_CTX_new();
  if (ctx == nullptr) return false;
  EVP_DecodeInit(ctx);
  int len = 0;
  int total = 0;
  int rc = EVP_DecodeUpdate(ctx, reinterpret_cast<unsigned char*>(buf.data()), &len,
                            reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (rc < 0) {
    EVP_ENCODE_CTX_free(ctx);
    return false;
  }
  total = len;
  rc = EVP_DecodeFinal(ctx, reinterpret_cast<unsigned char*>(buf.data()) + total, &len);
  EVP_ENCODE_CTX_free(ctx);
  if (rc < 0) return false;
  total += len;
  buf.resize(static_cast<std::size_t>(total));
  out = std::move(buf);
  return true;
}

}  // namespace berth::core
