#include "core/failure.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>

using namespace berth;

TEST(Failure, EveryFailureMapsToAnErrorStatusAndACodeClientsKnow) {
  // The OCI distribution spec's codes, and the two registries add that containerd
  // and the Docker client understand (TOOMANYREQUESTS, UNAVAILABLE).
  const std::set<std::string> known = {
      "BLOB_UNKNOWN",          "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
      "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID",    "MANIFEST_UNKNOWN",    "NAME_INVALID",
      "NAME_UNKNOWN",          "SIZE_INVALID",        "UNAUTHORIZED",        "DENIED",
      "UNSUPPORTED",           "TOOMANYREQUESTS",     "UNAVAILABLE",         "UNKNOWN"};
  for (int i = 0; i <= static_cast<int>(core::failure::internal); ++i) {
    const auto a = core::answer_for(static_cast<core::failure>(i));
    EXPECT_GE(a.status, 400u) << i;
    EXPECT_LE(a.status, 599u) << i;
    EXPECT_TRUE(known.contains(std::string(a.code))) << i << " " << a.code;
  }
}

TEST(Failure, TheTableDecidesAndAnUpstreamStatusIsPassedOn) {
  const auto busy = core::error(core::failure::upstream_busy, "no connection free");
  EXPECT_EQ(busy.status, 503u);
  EXPECT_EQ(busy.code, "UNAVAILABLE");
  EXPECT_EQ(busy.message, "no connection free");
  EXPECT_EQ(core::error(core::failure::upstream_policy, "x").status, 412u);
  EXPECT_EQ(core::error(core::failure::upstream_failed, "x").status, 502u);
  EXPECT_EQ(core::error(core::failure::upstream_failed, "x", 503).status, 503u);
  EXPECT_EQ(core::error(core::failure::upstream_wrong_bytes, "x").code, "DIGEST_INVALID");
}
