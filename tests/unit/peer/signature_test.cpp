#include "peer/signature.hpp"

#include <gtest/gtest.h>

#include <string>

#include "core/hasher.hpp"

namespace berth::peer {
namespace {

const std::string k_secret = "an-obviously-fake-cluster-secret";
const std::string k_digest = "sha256:" + std::string(64, 'a');
constexpr std::int64_t k_now = 1'800'000'000;

TEST(PeerSignature, SignedRequestChecks) {
  EXPECT_EQ(check(k_secret, "GET", k_digest, sign(k_secret, "GET", k_digest, k_now), k_now), verdict::ok);
  // Within the validity either side of the receiver's clock.
  EXPECT_EQ(check(k_secret, "GET", k_digest, sign(k_secret, "GET", k_digest, k_now - 30), k_now), verdict::ok);
  EXPECT_EQ(check(k_secret, "GET", k_digest, sign(k_secret, "GET", k_digest, k_now + 30), k_now), verdict::ok);
}

TEST(PeerSignature, ExpiredOrFromTheFutureIsRefused) {
  EXPECT_EQ(check(k_secret, "GET", k_digest, sign(k_secret, "GET", k_digest, k_now - 31), k_now), verdict::expired);
  EXPECT_EQ(check(k_secret, "GET", k_digest, sign(k_secret, "GET", k_digest, k_now + 31), k_now), verdict::expired);
}

TEST(PeerSignature, ASignatureNamesOneSecretMethodAndDigest) {
  const auto header = sign(k_secret, "GET", k_digest, k_now);
  EXPECT_EQ(check("another-fake-secret-of-length", "GET", k_digest, header, k_now), verdict::wrong);
  EXPECT_EQ(check(k_secret, "HEAD", k_digest, header, k_now), verdict::wrong);
  EXPECT_EQ(check(k_secret, "GET", "sha256:" + std::string(64, 'b'), header, k_now), verdict::wrong);
  // A timestamp moved forward (to stretch a captured header) breaks the signature.
  auto moved = header;
  moved.replace(moved.find("t=") + 2, 10, std::to_string(k_now + 20));
  EXPECT_EQ(check(k_secret, "GET", k_digest, moved, k_now + 40), verdict::wrong);
  // One flipped character of the signature.
  auto flipped = header;
  flipped.back() = flipped.back() == '0' ? '1' : '0';
  EXPECT_EQ(check(k_secret, "GET", k_digest, flipped, k_now), verdict::wrong);
}

TEST(PeerSignature, TheClusterSecretItselfSignsNothing) {
  // The same secret may sign the shared metadata: a MAC made with it directly (as the
  // metadata's are) is no peer signature; only one made with the derived key is.
  const std::string t = std::to_string(k_now);
  const std::string data = "berth-peer-v1\nGET\n" + k_digest + "\n" + t;
  const auto raw = "Berth-Peer t=" + t + ", sig=" + core::hmac_sha256_hex(k_secret, data);
  EXPECT_EQ(check(k_secret, "GET", k_digest, raw, k_now), verdict::wrong);
  const auto key = core::hmac_sha256_hex(k_secret, "berth-peer-key-v1");
  const auto derived = "Berth-Peer t=" + t + ", sig=" + core::hmac_sha256_hex(key, data);
  EXPECT_EQ(check(k_secret, "GET", k_digest, derived, k_now), verdict::ok);
  EXPECT_EQ(sign(k_secret, "GET", k_digest, k_now), derived);
}

TEST(PeerSignature, MalformedHeadersAreRefused) {
  EXPECT_EQ(check(k_secret, "GET", k_digest, "", k_now), verdict::missing);
  const auto good = sign(k_secret, "GET", k_digest, k_now);
  const auto sig = good.substr(good.find("sig=") + 4);
  for (const std::string& bad : std::initializer_list<std::string>{
           "Bearer " + sig,
           "Berth-Peer " + sig,
           "Berth-Peer t=, sig=" + sig,
           "Berth-Peer t=-5, sig=" + sig,
           "Berth-Peer t=1800000000x, sig=" + sig,
           "Berth-Peer t=99999999999999999999, sig=" + sig,
           "Berth-Peer t=1800000000, sig=" + sig.substr(1),
           "Berth-Peer t=1800000000, sig=" + sig + "0",
           "Berth-Peer t=1800000000,sig=" + sig,
           "berth-peer t=1800000000, sig=" + sig,
       }) {
    EXPECT_NE(check(k_secret, "GET", k_digest, bad, k_now), verdict::ok) << bad;
  }
}

}  // namespace
}  // namespace berth::peer
