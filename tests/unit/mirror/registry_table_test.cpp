#include "mirror/registry_table.hpp"

#include <gtest/gtest.h>

#include "metrics/metrics.hpp"
#include "upstream/client.hpp"
#include "upstream/token_cache.hpp"

using berth::mirror::repository_matches;

TEST(RepositoryPattern, SingleStarStaysInOneComponent) {
  EXPECT_TRUE(repository_matches("library/*", "library/app"));
  EXPECT_FALSE(repository_matches("library/*", "library/a/b"));
  EXPECT_FALSE(repository_matches("library/*", "library"));
  EXPECT_FALSE(repository_matches("library/*", "libraryx/app"));
  EXPECT_TRUE(repository_matches("team-*/app", "team-a/app"));
}

TEST(RepositoryPattern, DoubleStarCrossesComponents) {
  EXPECT_TRUE(repository_matches("platform/**", "platform/a"));
  EXPECT_TRUE(repository_matches("platform/**", "platform/a/b/c"));
  EXPECT_FALSE(repository_matches("platform/**", "platform"));
  EXPECT_FALSE(repository_matches("platform/**", "other/platform/a"));
  EXPECT_TRUE(repository_matches("**", "anything/at/all"));
}

TEST(RepositoryPattern, ExactNames) {
  EXPECT_TRUE(repository_matches("library/app", "library/app"));
  EXPECT_FALSE(repository_matches("library/app", "library/app2"));
}

namespace {
struct two_registries {
  berth::metrics::registry metrics;
  berth::upstream::token_cache tokens;
  berth::upstream::registry harbor{{{"harbor.example.ts.net", "harbor.internal:5000"},
                                    "https://harbor.example.ts.net",
                                    {},
                                    {"library/*"},
                                    {},
                                    {},
                                    {}},
                                   tokens,
                                   metrics};
  berth::upstream::registry open{
      {{"open.example.ts.net"}, "https://open.example.ts.net", {}, {}, {}, {}, {}}, tokens, metrics};
  berth::mirror::registry_table table{{&harbor, &open}, "harbor.example.ts.net"};
};
}  // namespace

TEST(RegistryTable, RoutesByNsAndNothingElse) {
  two_registries t;
  EXPECT_EQ(t.table.find("harbor.example.ts.net"), &t.harbor);
  EXPECT_EQ(t.table.find("HARBOR.example.TS.net"), &t.harbor) << "host names are case-insensitive";
  EXPECT_EQ(t.table.find("harbor.internal:5000"), &t.harbor);
  EXPECT_EQ(t.table.find("open.example.ts.net"), &t.open);
  EXPECT_EQ(t.table.find(""), &t.harbor) << "no ns: the default registry";
  for (const char* unknown :
       {"evil.example.com", "harbor.example.ts.net.evil.com", "harbor.internal", "169.254.169.254"}) {
    EXPECT_EQ(t.table.find(unknown), nullptr) << unknown << " must not be routed anywhere";
  }
  berth::mirror::registry_table no_default{{&t.harbor}, ""};
  EXPECT_EQ(no_default.find(""), nullptr);
}

TEST(RegistryTable, TheAllowlistAdmitsOnlyItsPatterns) {
  two_registries t;
  EXPECT_TRUE(berth::mirror::registry_table::allows(t.harbor, "library/app"));
  EXPECT_FALSE(berth::mirror::registry_table::allows(t.harbor, "private/secret"));
  EXPECT_FALSE(berth::mirror::registry_table::allows(t.harbor, "library/a/b"));
  EXPECT_TRUE(berth::mirror::registry_table::allows(t.open, "anything/at/all")) << "no patterns: all";
}
