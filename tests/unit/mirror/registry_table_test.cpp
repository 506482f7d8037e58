#include "mirror/registry_table.hpp"

#include <gtest/gtest.h>

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
