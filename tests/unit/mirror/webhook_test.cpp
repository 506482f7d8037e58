// Harbor webhook events reduced to metadata cache groups.
#include "mirror/webhook.hpp"

#include <gtest/gtest.h>

#include "metrics/metrics.hpp"
#include "upstream/client.hpp"
#include "upstream/token_cache.hpp"

using namespace berth;

namespace {

const std::string k_digest = "sha256:" + std::string(64, 'a');

struct fixture {
  metrics::registry metrics;
  upstream::token_cache tokens;
  upstream::registry harbor{
      {{"harbor.example.ts.net"}, "https://harbor.example.ts.net", {}, {}, {}, {}, {}}, tokens, metrics};
  upstream::registry other{
      {{"other.example.ts.net"}, "https://other.example.ts.net", {}, {}, {}, {}, {}}, tokens, metrics};
  mirror::registry_table table{{&harbor, &other}, "harbor.example.ts.net"};
};

std::string event(const std::string& type, const std::string& envelope,
                  const std::string& host = "harbor.example.ts.net") {
  return R"({"type":")" + type + R"(","occur_at":1,")" + envelope + R"(":{"resources":[{"digest":")" + k_digest +
         R"(","tag":"latest","resource_url":")" + host +
         R"(/library/app:latest"}],"repository":{"name":"app",)"
         R"("namespace":"library","repo_full_name":"library/app","repo_type":"private"}}})";
}

}  // namespace

TEST(HarborWebhook, PushDropsTheTagAndTheDigest) {
  fixture f;
  std::string error;
  auto inv = mirror::parse_harbor_event(event("PUSH_ARTIFACT", "event_data"), f.table, "", error);
  ASSERT_TRUE(inv) << error;
  EXPECT_EQ(inv->registry, "harbor.example.ts.net");
  EXPECT_EQ(inv->repository, "library/app");
  ASSERT_EQ(inv->groups.size(), 2u);
  EXPECT_EQ(inv->groups[0], "tag:harbor.example.ts.net/library/app:latest");
  EXPECT_EQ(inv->groups[1], "ref:harbor.example.ts.net/library/app@" + k_digest);
}

TEST(HarborWebhook, CloudEventsFormatAndRegistryChoice) {
  fixture f;
  std::string error;
  auto inv =
      mirror::parse_harbor_event(event("harbor.artifact.deleted", "data", "other.example.ts.net"), f.table, "", error);
  ASSERT_TRUE(inv) << error;
  EXPECT_EQ(inv->registry, "other.example.ts.net");
  // ?registry= wins over the resource_url host; an unknown host falls back to the default.
  inv = mirror::parse_harbor_event(event("PUSH_ARTIFACT", "event_data"), f.table, "other.example.ts.net", error);
  EXPECT_EQ(inv->registry, "other.example.ts.net");
  inv = mirror::parse_harbor_event(event("PUSH_ARTIFACT", "event_data", "harbor.internal:8443"), f.table, "", error);
  EXPECT_EQ(inv->registry, "harbor.example.ts.net");
  EXPECT_FALSE(mirror::parse_harbor_event(event("PUSH_ARTIFACT", "event_data"), f.table, "nope.example", error));
  EXPECT_NE(error.find("nope.example"), std::string::npos);
}

TEST(HarborWebhook, PullsChangeNothingAndGarbageIsRefused) {
  fixture f;
  std::string error;
  auto pull = mirror::parse_harbor_event(event("PULL_ARTIFACT", "event_data"), f.table, "", error);
  ASSERT_TRUE(pull);
  EXPECT_TRUE(pull->groups.empty());
  EXPECT_FALSE(mirror::parse_harbor_event("{", f.table, "", error));
  EXPECT_NE(error.find("JSON"), std::string::npos);
  EXPECT_FALSE(mirror::parse_harbor_event(R"({"type":"PUSH_ARTIFACT"})", f.table, "", error));
  EXPECT_FALSE(mirror::parse_harbor_event(
      R"({"type":"PUSH_ARTIFACT","event_data":{"resources":[],"repository":{"repo_full_name":"../etc"}}})", f.table, "",
      error));
  EXPECT_NE(error.find("not a repository name"), std::string::npos);
}

TEST(HarborWebhook, SecretComparison) {
  EXPECT_TRUE(mirror::webhook_authorized("s3cret", "s3cret"));
  EXPECT_TRUE(mirror::webhook_authorized("Bearer s3cret", "s3cret"));
  EXPECT_FALSE(mirror::webhook_authorized("s3cre", "s3cret"));
  EXPECT_FALSE(mirror::webhook_authorized("", "s3cret"));
  EXPECT_FALSE(mirror::webhook_authorized("", ""));
  EXPECT_FALSE(mirror::webhook_authorized("Basic s3cret", "s3cret"));
}
