#include "core/reference.hpp"
#include "core/range.hpp"

#include <gtest/gtest.h>

#include <string>

using namespace berth::core;

TEST(Name, AcceptsSpecExamples) {
  for (const char* n : {"library/app", "a", "a/b/c", "my-app", "my--app", "my_app", "my__app", "my.app", "0x/1.2_3",
                        "platform/team/service"}) {
    EXPECT_TRUE(is_valid_name(n)) << n;
  }
}

TEST(Name, RejectsWhatTheGrammarForbids) {
  for (const char* n : {"", "Library/app", "library//app", "/library", "library/", "lib___x", "-app", "app-", ".app",
                        "..", "a/../b", "a/./b", "app.", "a b", "a%2fb", "a:b", "a@b"}) {
    EXPECT_FALSE(is_valid_name(n)) << n;
  }
}

TEST(Name, EnforcesTheLengthLimit) {
  EXPECT_TRUE(is_valid_name(std::string(255, 'a')));
  EXPECT_FALSE(is_valid_name(std::string(256, 'a')));
}

TEST(Tag, FollowsTheSpec) {
  EXPECT_TRUE(is_valid_tag("v1"));
  EXPECT_TRUE(is_valid_tag("_x"));
  EXPECT_TRUE(is_valid_tag("V1.2.3-rc_1"));
  EXPECT_TRUE(is_valid_tag(std::string(128, 'a')));
  EXPECT_FALSE(is_valid_tag(std::string(129, 'a')));
  EXPECT_FALSE(is_valid_tag(""));
  EXPECT_FALSE(is_valid_tag(".hidden"));
  EXPECT_FALSE(is_valid_tag("-x"));
  EXPECT_FALSE(is_valid_tag(".."));
  EXPECT_FALSE(is_valid_tag("a/b"));
  EXPECT_FALSE(is_valid_tag("a:b"));
}

TEST(Digest, ParsesSha256AndSha512) {
  const std::string hex64(64, 'a');
  auto d = parse_digest("sha256:" + hex64);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->algorithm, "sha256");
  EXPECT_EQ(d->encoded, hex64);
  EXPECT_EQ(d->str(), "sha256:" + hex64);
  EXPECT_TRUE(parse_digest("sha512:" + std::string(128, '0')));
}

TEST(Digest, SaysWhyItRejects) {
  digest_problem p{};
  EXPECT_FALSE(parse_digest("sha256:" + std::string(64, 'A'), &p));
  EXPECT_EQ(p, digest_problem::bad_encoding);  // uppercase is forbidden for sha256
  EXPECT_FALSE(parse_digest("sha256:abc", &p));
  EXPECT_EQ(p, digest_problem::bad_encoding);
  EXPECT_FALSE(parse_digest("md5:" + std::string(32, 'a'), &p));
  EXPECT_EQ(p, digest_problem::unsupported_algorithm);
  EXPECT_FALSE(parse_digest("sha256", &p));
  EXPECT_EQ(p, digest_problem::malformed);
  EXPECT_FALSE(parse_digest(":abc", &p));
  EXPECT_EQ(p, digest_problem::malformed);
  EXPECT_FALSE(parse_digest("SHA256:" + std::string(64, 'a'), &p));
  EXPECT_EQ(p, digest_problem::malformed);
  EXPECT_FALSE(parse_digest("sha256:" + std::string(63, 'a') + "/", &p));
  EXPECT_EQ(p, digest_problem::malformed);
  EXPECT_FALSE(parse_digest("sha256+:" + std::string(64, 'a'), &p));
  EXPECT_EQ(p, digest_problem::malformed);
}

TEST(ByteRange, ParsesWhatContainerdSendsAndNothingElse) {
  using berth::core::parse_byte_range;
  auto r = parse_byte_range("bytes=100-");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 100u);
  EXPECT_FALSE(r->last);
  r = parse_byte_range("bytes=0-9");
  ASSERT_TRUE(r);
  EXPECT_EQ(*r->last, 9u);
  r = parse_byte_range("bytes=9999999999999999999-");
  ASSERT_TRUE(r) << "19 digits fit in 64 bits";
  for (const char* bad : {"", "bytes=", "bytes=5-4", "items=1-", "bytes=a-", "bytes=1-b", "bytes=99999999999999999999-",
                          "bytes=-", "bytes=--5", "bytes=-x"}) {
    EXPECT_FALSE(parse_byte_range(bad)) << bad;
  }
  // A suffix: the last N bytes, all of a shorter blob, nothing of an empty one.
  r = parse_byte_range("bytes=-10");
  ASSERT_TRUE(r && r->suffix);
  EXPECT_EQ(r->resolve(1000), (std::pair<std::uint64_t, std::uint64_t>{990, 1000}));
  EXPECT_EQ(r->resolve(4), (std::pair<std::uint64_t, std::uint64_t>{0, 4}));
  EXPECT_FALSE(r->resolve(0));
  EXPECT_FALSE(parse_byte_range("bytes=-0")->resolve(1000)) << "a zero-length suffix is unsatisfiable";
  // Several ranges: the first is served, and the header said there were more.
  r = parse_byte_range("bytes=0-1, 5-6");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->more);
  EXPECT_EQ(r->resolve(100), (std::pair<std::uint64_t, std::uint64_t>{0, 2}));
  EXPECT_EQ(parse_byte_range("bytes= 1-")->first, 1u);
  EXPECT_FALSE(parse_byte_range("bytes=100-")->resolve(100)) << "starting at the size: 416";
  EXPECT_EQ(parse_byte_range("bytes=10-99999")->resolve(100), (std::pair<std::uint64_t, std::uint64_t>{10, 100}));
}
