// The manifest path against a scripted upstream: what it asks, when, and what the
// client gets when the upstream answers well, refuses, goes away or sends wrong bytes.
#include <gtest/gtest.h>

#include "mirror_fixture.hpp"

using namespace berth;
using namespace std::chrono_literals;
using berth::testing::scripted_answer;

namespace {

const std::string k_m1 = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[1]})";
const std::string k_m2 = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[2]})";

class manifests : public berth::testing::mirror_fixture {};

}  // namespace

TEST_F(manifests, ATagIsAskedForOnceThenServedFromTheCache) {
  start();
  const auto d = registry_.add_manifest("library/app", "1.0", k_m1);
  auto r = serve(manifest("library/app", "1.0"));
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.body, k_m1);
  EXPECT_EQ(r.headers.get("Docker-Content-Digest"), d);
  EXPECT_EQ(r.headers.get("Content-Type"), berth::testing::k_oci_manifest_type);
  ASSERT_EQ(up_.calls.size(), 1u);
  EXPECT_EQ(up_.calls[0].method, "GET");
  EXPECT_EQ(up_.calls[0].target, "/v2/library/app/manifests/1.0");
  // Forwarded: the Accept of containerd's class, not whatever the client sent.
  EXPECT_NE(up_.calls[0].accept.find("application/vnd.oci.image.index.v1+json"), std::string::npos);

  auto again = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(again.body, k_m1);
  // containerd's next request, by digest, is answered too: the tag's answer confirmed it.
  auto by_digest = serve(manifest("library/app", d));
  EXPECT_EQ(by_digest.status, 200u);
  EXPECT_EQ(by_digest.body, k_m1);
  EXPECT_EQ(up_.calls.size(), 1u);
}

TEST_F(manifests, AnExpiredTagIsRevalidatedWithAHeadAndItsBytesComeFromTheCache) {
  meta_options_.tag_ttl = 0ms;
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  serve(manifest("library/app", "1.0"));
  auto r = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.body, k_m1);
  ASSERT_EQ(up_.calls.size(), 2u);
  EXPECT_EQ(up_.calls[1].method, "HEAD");
}

TEST_F(manifests, ATagThatMovedIsFollowedToItsNewManifest) {
  meta_options_.tag_ttl = 0ms;
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  serve(manifest("library/app", "1.0"));
  const auto d2 = registry_.add_manifest("library/app", "1.0", k_m2);
  auto r = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(r.body, k_m2);
  EXPECT_EQ(r.headers.get("Docker-Content-Digest"), d2);
  ASSERT_EQ(up_.calls.size(), 3u);
  EXPECT_EQ(up_.calls[1].method, "HEAD");
  EXPECT_EQ(up_.calls[2].method, "GET");
  EXPECT_EQ(up_.calls[2].target, "/v2/library/app/manifests/" + d2);
}

TEST_F(manifests, ARevalidationHeadRefusedWith405OrWithoutALengthIsCompletedWithGet) {
  meta_options_.tag_ttl = 0ms;
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  serve(manifest("library/app", "1.0"));
  up_.script = [this](const upstream::request& r) {
    if (r.method == "HEAD") return scripted_answer{405};
    return registry_(r);
  };
  EXPECT_EQ(serve(manifest("library/app", "1.0")).body, k_m1);
  ASSERT_EQ(up_.calls.size(), 3u);
  EXPECT_EQ(up_.calls[2].method, "GET");

  up_.script = [this](const upstream::request& r) {
    auto a = registry_(r);
    if (r.method == "HEAD") a.content_length = false;
    return a;
  };
  EXPECT_EQ(serve(manifest("library/app", "1.0")).body, k_m1);
  ASSERT_EQ(up_.calls.size(), 5u);
  EXPECT_EQ(up_.calls[4].method, "GET");
}

TEST_F(manifests, ARefusedRevalidationGivesAGetClientTheUpstreamsOwnError) {
  meta_options_.tag_ttl = 0ms;
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  serve(manifest("library/app", "1.0"));
  // Harbor's policy now forbids the image (412, with its own message on GET).
  const std::string policy = R"({"errors":[{"code":"PROJECTPOLICYVIOLATION","message":"not scanned"}]})";
  up_.script = [&](const upstream::request&) { return scripted_answer{412, {}, policy}; };
  auto r = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(r.status, 412u);
  EXPECT_EQ(r.body, policy);
  ASSERT_EQ(up_.calls.size(), 3u);
  EXPECT_EQ(up_.calls[1].method, "HEAD");
  EXPECT_EQ(up_.calls[2].method, "GET");
  // A HEAD client gets the status, never the bytes it may no longer have.
  auto h = serve(head(manifest("library/app", "1.0")));
  EXPECT_EQ(h.status, 412u);
  ASSERT_TRUE(h.error);
  EXPECT_EQ(h.error->code, "DENIED");
}

TEST_F(manifests, A404IsRememberedForTheNegativeTtl) {
  start();
  auto r = serve(manifest("library/app", "missing"));
  EXPECT_EQ(r.status, 404u);
  EXPECT_EQ(up_.calls.size(), 1u);
  auto again = serve(manifest("library/app", "missing"));
  EXPECT_EQ(again.status, 404u);
  ASSERT_TRUE(again.error);
  EXPECT_EQ(again.error->code, "MANIFEST_UNKNOWN");
  EXPECT_EQ(up_.calls.size(), 1u);
}

TEST_F(manifests, AnUnavailableUpstreamServesTheLastAnswerStaleButNeverInventsOne) {
  meta_options_.tag_ttl = 0ms;
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  serve(manifest("library/app", "1.0"));
  up_.script = [](const upstream::request&) { return scripted_answer{503, {{"Retry-After", "7"}}, "down"}; };
  auto stale = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(stale.status, 200u);
  EXPECT_EQ(stale.body, k_m1);
  auto unknown = serve(manifest("library/app", "2.0"));
  EXPECT_EQ(unknown.status, 503u);
  EXPECT_EQ(unknown.headers.get("Retry-After"), "7");
  ASSERT_TRUE(unknown.error);
  EXPECT_EQ(unknown.error->code, "UNAVAILABLE");
}

TEST_F(manifests, WrongBytesAreAskedForOnceMoreThenRefusedAndNeverCached) {
  start();
  const auto d = registry_.add_manifest("library/app", "1.0", k_m1);
  int wrong = 1;
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    if (wrong-- > 0) a.body[10] ^= 1;
    return a;
  };
  auto r = serve(manifest("library/app", d));
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.body, k_m1);
  EXPECT_EQ(up_.count("GET"), 2u);

  wrong = 2;
  const auto d2 = registry_.add_manifest("library/app", "2.0", k_m2);
  auto bad = serve(manifest("library/app", d2));
  EXPECT_EQ(bad.status, 502u);
  ASSERT_TRUE(bad.error);
  EXPECT_EQ(bad.error->code, "DIGEST_INVALID");
  EXPECT_EQ(up_.count("GET", "/v2/library/app/manifests/" + d2), 2u);
  // Nothing was kept: the next request asks again, and now gets the right bytes.
  EXPECT_EQ(serve(manifest("library/app", d2)).body, k_m2);
  EXPECT_EQ(up_.count("GET", "/v2/library/app/manifests/" + d2), 3u);
  EXPECT_EQ(metric("berth_digest_mismatches_total{kind=\"manifest\",registry=\"registry.test\"} "), "3");
}

TEST_F(manifests, BytesThatDisagreeWithTheAnnouncedDigestAreNoAnswer) {
  start();
  const auto d = registry_.add_manifest("library/app", "1.0", k_m1);
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    a.body = k_m2;  // the tag's bytes, damaged on the way: they no longer match the header
    return a;
  };
  auto r = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(r.status, 502u);
  ASSERT_TRUE(r.error);
  EXPECT_EQ(r.error->code, "DIGEST_INVALID");
  EXPECT_EQ(up_.count("GET"), 2u);
  up_.script = [this](const upstream::request& r) { return registry_(r); };
  EXPECT_EQ(serve(manifest("library/app", "1.0")).headers.get("Docker-Content-Digest"), d);
}

TEST_F(manifests, AnOversizedManifestIsRefused) {
  options_.max_manifest_bytes = 16;
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  auto r = serve(manifest("library/app", "1.0"));
  EXPECT_EQ(r.status, 502u);
  ASSERT_TRUE(r.error);
  EXPECT_EQ(r.error->code, "MANIFEST_INVALID");
}

TEST_F(manifests, NoUsableResponseMapsToAGatewayStatus) {
  start();
  boost::system::error_code next;
  up_.script = [&](const upstream::request&) {
    scripted_answer a;
    a.error = next;
    return a;
  };
  next = upstream::errc::timeout;
  EXPECT_EQ(serve(manifest("library/app", "a")).status, 504u);
  next = upstream::errc::pool_exhausted;
  auto busy = serve(manifest("library/app", "b"));
  EXPECT_EQ(busy.status, 503u);
  EXPECT_EQ(busy.headers.get("Retry-After"), "1");
  next = upstream::errc::connect_failed;
  auto down = serve(manifest("library/app", "c"));
  EXPECT_EQ(down.status, 502u);
  ASSERT_TRUE(down.error);
  EXPECT_EQ(down.error->code, "UNAVAILABLE");
}

TEST_F(manifests, AClientWithoutAcceptIsPassedThroughUncached) {
  start();
  registry_.add_manifest("library/app", "1.0", k_m1);
  for (int i = 0; i < 2; ++i) {
    auto r = serve(manifest("library/app", "1.0", ""));
    EXPECT_EQ(r.body, k_m1);
  }
  ASSERT_EQ(up_.calls.size(), 2u);
  EXPECT_EQ(up_.calls[0].accept, "");
  EXPECT_EQ(up_.calls[1].accept, "");
}

TEST_F(manifests, WithoutAMetadataCacheEveryRequestGoesUpstreamVerified) {
  start(false, false);
  const auto d = registry_.add_manifest("library/app", "1.0", k_m1);
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    a.body[5] ^= 1;
    return a;
  };
  EXPECT_EQ(serve(manifest("library/app", d)).status, 502u);
  up_.script = [this](const upstream::request& r) { return registry_(r); };
  EXPECT_EQ(serve(manifest("library/app", d)).body, k_m1);
  EXPECT_EQ(serve(manifest("library/app", d)).body, k_m1);
  EXPECT_EQ(up_.count("GET"), 4u);
}
