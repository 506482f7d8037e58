#include "core/hasher.hpp"
#include "core/chunk_hash.hpp"

#include <gtest/gtest.h>

using namespace berth::core;

TEST(Hasher, KnownVectors) {
  EXPECT_EQ(digest_of(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(digest_of("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(digest_of("abc", "sha512").substr(0, 23), "sha512:ddaf35a193617aba");
}

TEST(Hasher, IncrementalEqualsOneShot) {
  hasher h;
  h.update("a");
  h.update("bc");
  EXPECT_EQ(h.finish(), digest_of("abc"));
}

TEST(Base64, RoundTripsAndRejectsGarbage) {
  EXPECT_EQ(base64_encode("robot$cluster-pull:pw"), "cm9ib3QkY2x1c3Rlci1wdWxsOnB3");
  std::string out;
  ASSERT_TRUE(base64_decode("cm9ib3QkY2x1c3Rlci1wdWxsOnB3", out));
  EXPECT_EQ(out, "robot$cluster-pull:pw");
  ASSERT_TRUE(base64_decode("YQ==", out));
  EXPECT_EQ(out, "a");
  EXPECT_FALSE(base64_decode("!!!!", out));
}

TEST(Hmac, MatchesRfc4231AndComparesInConstantTime) {
  // RFC 4231, test case 2.
  EXPECT_EQ(berth::core::hmac_sha256_hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_TRUE(berth::core::constant_time_equal("abc", "abc"));
  EXPECT_FALSE(berth::core::constant_time_equal("abc", "abd"));
  EXPECT_FALSE(berth::core::constant_time_equal("abc", "abcd"));
}

TEST(Hasher, ACloneGoesOnFromTheSameState) {
  berth::core::hasher h;
  h.update("abc");
  auto copy = h.clone();
  h.update("def");
  copy.update("def");
  EXPECT_EQ(copy.finish(), berth::core::digest_of("abcdef"));
  EXPECT_EQ(h.finish(), berth::core::digest_of("abcdef"));
}

TEST(ChunkHash, IsXxh3Of128BitsIncrementalAndHexRoundTrips) {
  using namespace berth::core;
  // XXH3_128bits of no bytes (xxHash's own test vector), big-endian.
  EXPECT_EQ(to_hex(chunk_digest_of("")), "99aa06d3014798d86001c324468d497f");
  std::string data(100000, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31);
  chunk_hasher h;
  h.update(data.data(), 12345);
  const auto partial = h.digest();
  EXPECT_EQ(partial, chunk_digest_of(std::string_view(data).substr(0, 12345))) << "digest() leaves the state as it was";
  h.update(data.data() + 12345, data.size() - 12345);
  EXPECT_EQ(h.digest(), chunk_digest_of(data));
  h.reset();
  EXPECT_EQ(h.digest(), chunk_digest_of(""));
  const auto hex = to_hex(chunk_digest_of(data));
  EXPECT_EQ(chunk_digest_from_hex(hex), chunk_digest_of(data));
  EXPECT_FALSE(chunk_digest_from_hex(hex.substr(1)));
  EXPECT_FALSE(chunk_digest_from_hex(std::string(32, 'g')));
  EXPECT_FALSE(chunk_digest_from_hex(std::string(32, 'A'))) << "lower-case hex only";
}
