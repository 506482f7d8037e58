#include "http/router.hpp"

#include <gtest/gtest.h>

using namespace berth;
using berth::http::route;

namespace {
const std::string k_digest = "sha256:" + std::string(64, 'a');
}

TEST(Router, Base) {
  auto r = route("GET", "/v2/");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.request().kind, mirror::endpoint::base);
  EXPECT_TRUE(route("GET", "/v2").ok());
  EXPECT_TRUE(route("HEAD", "/v2/").ok());
}

TEST(Router, ManifestByTagWithEncodedNs) {
  auto r = route("HEAD", "/v2/library/app/manifests/1.0?ns=myregistry.io%3A5000");
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& q = r.request();
  EXPECT_EQ(q.kind, mirror::endpoint::manifest);
  EXPECT_TRUE(q.head);
  EXPECT_EQ(q.name, "library/app");
  EXPECT_EQ(q.reference, "1.0");
  EXPECT_FALSE(q.digest);
  EXPECT_EQ(q.ns, "myregistry.io:5000");
  EXPECT_EQ(r.route, "manifest");
}

TEST(Router, ManifestAndBlobByDigest) {
  auto m = route("GET", "/v2/a/b/c/manifests/" + k_digest + "?ns=docker.io");
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(m.request().digest);
  EXPECT_EQ(m.request().digest->str(), k_digest);
  EXPECT_EQ(m.request().name, "a/b/c");
  auto b = route("GET", "/v2/library/app/blobs/" + k_digest);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b.request().kind, mirror::endpoint::blob);
  EXPECT_EQ(b.request().ns, "");
}

TEST(Router, NamesMayContainEndpointWords) {
  auto r = route("GET", "/v2/manifests/blobs/manifests/latest");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.request().name, "manifests/blobs");
  EXPECT_EQ(r.request().reference, "latest");
}

TEST(Router, TagsListPassesPagination) {
  auto r = route("GET", "/v2/library/app/tags/list?n=10&last=v1&ns=r.example");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.request().kind, mirror::endpoint::tags_list);
  EXPECT_EQ(*r.request().n, "10");
  EXPECT_EQ(*r.request().last, "v1");
  for (const char* odd : {"?n=-1", "?n=abc", "?last=.bad"}) {
    auto ignored = route("GET", std::string("/v2/library/app/tags/list") + odd);
    ASSERT_TRUE(ignored.ok()) << odd << ": the registry ignores what it cannot use";
    EXPECT_FALSE(ignored.request().n) << odd;
    EXPECT_FALSE(ignored.request().last) << odd;
  }
}

TEST(Router, Referrers) {
  auto r = route("GET", "/v2/library/app/referrers/" + k_digest + "?artifactType=application%2Fvnd.example");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.request().kind, mirror::endpoint::referrers);
  EXPECT_EQ(*r.request().artifact_type, "application/vnd.example");
}

TEST(Router, PushAndOtherMethodsAre405Unsupported) {
  for (const char* m : {"PUT", "POST", "PATCH", "DELETE", "OPTIONS"}) {
    auto r = route(m, "/v2/library/app/manifests/v1");
    ASSERT_FALSE(r.ok()) << m;
    EXPECT_EQ(r.error().status, 405u);
    EXPECT_EQ(r.error().code, "UNSUPPORTED");
  }
  auto upload = route("POST", "/v2/library/app/blobs/uploads/");
  EXPECT_EQ(upload.error().status, 405u);
}

TEST(Router, BadNamesTagsAndDigests) {
  auto expect = [](const std::string& target, unsigned status, const std::string& code) {
    auto r = route("GET", target);
    ASSERT_FALSE(r.ok()) << target;
    EXPECT_EQ(r.error().status, status) << target;
    EXPECT_EQ(r.error().code, code) << target;
  };
  expect("/v2/Library/app/manifests/v1", 400, "NAME_INVALID");
  expect("/v2/library//app/manifests/v1", 400, "NAME_INVALID");
  expect("/v2/library/../app/manifests/v1", 400, "NAME_INVALID");
  expect("/v2/library/%2e%2e/app/manifests/v1", 400, "NAME_INVALID");
  expect("/v2/library%2Fapp/manifests/v1", 400, "NAME_INVALID");
  expect("/v2/library/app/manifests/.v1", 404, "MANIFEST_UNKNOWN");
  expect("/v2/library/app/manifests/.INVALID_MANIFEST_NAME", 404, "MANIFEST_UNKNOWN");
  expect("/v2/library/app/manifests/" + std::string(129, 'a'), 404, "MANIFEST_UNKNOWN");
  expect("/v2/library/app/manifests/sha256:ABC", 404, "MANIFEST_UNKNOWN");
  expect("/v2/library/app/blobs/sha256:" + std::string(64, 'A'), 400, "DIGEST_INVALID");
  expect("/v2/library/app/blobs/latest", 400, "DIGEST_INVALID");
  expect("/v2/library/app/blobs/md5:" + std::string(32, 'a'), 400, "DIGEST_INVALID");
  expect("/v2/library/app/manifests/v1?ns=evil.com/../x", 400, "NAME_INVALID");
  expect("/v2/" + std::string(5000, 'a') + "/manifests/v1", 414, "NAME_INVALID");
  expect("/v2/_catalog", 404, "UNSUPPORTED");
  expect("/metrics", 404, "UNSUPPORTED");
  expect("not-a-target", 400, "NAME_INVALID");
}

TEST(Router, RejectedRequestsStillReportTheirNs) {
  auto r = route("GET", "/v2/Bad/manifests/v1?ns=r.example");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.ns, "r.example");
}

TEST(Router, HeadOnListingsIsUnsupported) {
  auto r = route("HEAD", "/v2/library/app/tags/list");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().status, 405u);
}
