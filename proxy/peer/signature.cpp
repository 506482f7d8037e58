#include "peer/signature.hpp"

#include <openssl/crypto.h>

#include <charconv>

#include "core/hasher.hpp"

namespace berth::peer {

namespace {

constexpr std::string_view k_scheme = "Berth-Peer ";

std::string mac(std::string_view secret, std::string_view method, std::string_view digest, std::string_view t) {
  // A key of its own, derived from the cluster secret: the same secret may also sign
  // the shared metadata (metadata.secret_file), and no MAC of one use is ever valid
  // for the other.
  const auto key = core::hmac_sha256_hex(secret, "berth-peer-key-v1");
  std::string data = "berth-peer-v1\n";
  data.append(method).append("\n").append(digest).append("\n").append(t);
  return core::hmac_sha256_hex(key, data);
}

}  // namespace

std::string sign(std::string_view secret, std::string_view method, std::string_view digest, std::int64_t unix_s) {
  const auto t = std::to_string(unix_s);
  return std::string(k_scheme) + "t=" + t + ", sig=" + mac(secret, method, digest, t);
}

std::string_view to_string(verdict v) {
  switch (v) {
    case verdict::ok: return "ok";
    case verdict::missing: return "missing";
    case verdict::malformed: return "malformed";
    case verdict::expired: return "expired";
    case verdict::wrong: return "wrong";
  }
  return "wrong";
}

verdict check(std::string_view secret, std::string_view method, std::string_view digest, std::string_view authorization,
              std::int64_t now_s) {
  if (authorization.empty()) return verdict::missing;
  if (!authorization.starts_with(k_scheme)) return verdict::malformed;
  auto rest = authorization.substr(k_scheme.size());
  if (!rest.starts_with("t=")) return verdict::malformed;
  rest.remove_prefix(2);
  const auto comma = rest.find(", sig=");
  if (comma == std::string_view::npos) return verdict::malformed;
  const auto t = rest.substr(0, comma);
  const auto sig = rest.substr(comma + 6);
  std::int64_t at = 0;
  const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), at);
  if (ec != std::errc() || end != t.data() + t.size() || t.empty() || t.size() > 12) return verdict::malformed;
  if (sig.size() != 64) return verdict::malformed;
  // The signature before the clock: an unsigned request learns nothing from the answer.
  const auto want = mac(secret, method, digest, t);
  if (CRYPTO_memcmp(want.data(), sig.data(), want.size()) != 0) return verdict::wrong;
  const auto skew = now_s - at;
  if (skew > k_validity.count() || -skew > k_validity.count()) return verdict::expired;
  return verdict::ok;
}

}  // namespace berth::peer
