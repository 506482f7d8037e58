#include "upstream/challenge.hpp"

#include <gtest/gtest.h>

using namespace berth::upstream;

TEST(Challenge, ParsesHarborBearer) {
  auto cs = parse_challenges(
      R"(Bearer realm="https://harbor.example/service/token",service="harbor-registry",scope="repository:library/app:pull")");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].scheme, "bearer");
  EXPECT_EQ(cs[0].param("realm"), "https://harbor.example/service/token");
  EXPECT_EQ(cs[0].param("service"), "harbor-registry");
  EXPECT_EQ(cs[0].param("scope"), "repository:library/app:pull");
}

TEST(Challenge, QuotedValuesKeepCommasAndEscapes) {
  auto cs = parse_challenges(R"(Bearer realm="https://a/t",scope="repository:samalba/my-app:pull,push",x="a\"b")");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].param("scope"), "repository:samalba/my-app:pull,push");
  EXPECT_EQ(cs[0].param("x"), "a\"b");
}

TEST(Challenge, SeveralChallengesInOneHeader) {
  auto cs = parse_challenges(R"(Basic realm="harbor", Bearer realm="https://h/t", service="s")");
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_EQ(cs[0].scheme, "basic");
  EXPECT_EQ(cs[0].param("realm"), "harbor");
  EXPECT_EQ(cs[1].scheme, "bearer");
  EXPECT_EQ(cs[1].param("service"), "s");
}

TEST(Challenge, SchemeAndParamNamesAreCaseInsensitive) {
  auto cs = parse_challenges(R"(BEARER Realm="https://h/t",SERVICE=registry)");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].scheme, "bearer");
  EXPECT_EQ(cs[0].param("realm"), "https://h/t");
  EXPECT_EQ(cs[0].param("service"), "registry");
}

TEST(Challenge, MultipleScopesAreKeptSpaceSeparated) {
  auto cs = parse_challenges(R"(Bearer realm="r",scope="repository:a:pull repository:b:pull")");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].param("scope"), "repository:a:pull repository:b:pull");
}

TEST(Challenge, ErrorParameterIsParsed) {
  auto cs = parse_challenges(R"(Bearer realm="r",service="s",error="invalid_token")");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].param("error"), "invalid_token");
}

TEST(Challenge, GarbageDoesNotCrash) {
  EXPECT_NO_THROW(parse_challenges(""));
  EXPECT_NO_THROW(parse_challenges("Bearer realm=\"unterminated"));
  EXPECT_NO_THROW(parse_challenges(",,,===\"\"\"\\"));
  auto cs = parse_challenges("Bearer realm=\"unterminated");
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].param("realm"), "");
}

TEST(PickChallenge, PrefersBearerAcrossHeaders) {
  auto c = pick_challenge({R"(Basic realm="harbor")", R"(Bearer realm="https://h/t",service="s")"});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->scheme, "bearer");
  auto b = pick_challenge({R"(Basic realm="harbor")"});
  ASSERT_TRUE(b);
  EXPECT_EQ(b->scheme, "basic");
  EXPECT_FALSE(pick_challenge({R"(Negotiate abc)"}));
  EXPECT_FALSE(pick_challenge({R"(Bearer service="no-realm")"}));
}
