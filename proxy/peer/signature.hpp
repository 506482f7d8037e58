#pragma once
// How Berth nodes prove to each other that a peer request comes from the cluster:
// "Authorization: Berth-Peer t=<unix seconds>, sig=<hex>", where sig is
// HMAC-SHA256(key, "berth-peer-v1\n" method "\n" digest "\n" t), key being the hex of
// HMAC-SHA256(secret, "berth-peer-key-v1") (so the cluster secret that signs the shared
// metadata may sign peer requests too, each use with a key of its own). A signature is
// good for k_validity either side of the receiver's clock and names one method and
// one digest, so a captured header fetches nothing else and soon nothing at all.
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace berth::peer {

inline constexpr std::chrono::seconds k_validity{30};
// What a request for a blob's chunk hashes (GET /peer/chunks/<digest>) is signed
// for in place of its HTTP method: a blob's signature does not fetch its chunk list,
// nor the other way round.
inline constexpr std::string_view k_chunk_list_method = "CHUNKS";

// The Authorization header value for `method` ("GET", "HEAD" or k_chunk_list_method)
// on `digest` at `unix_s`.
std::string sign(std::string_view secret, std::string_view method, std::string_view digest, std::int64_t unix_s);

enum class verdict { ok, missing, malformed, expired, wrong };
std::string_view to_string(verdict v);

// Checks an Authorization header against the secret at `now_s`; the signature is
// compared in constant time.
verdict check(std::string_view secret, std::string_view method, std::string_view digest, std::string_view authorization,
              std::int64_t now_s);

}  // namespace berth::peer
