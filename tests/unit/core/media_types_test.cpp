#include "core/media_types.hpp"

#include <gtest/gtest.h>

#include "core/hasher.hpp"

using namespace berth::core::media_type;

TEST(AcceptClass, ContainerdsLineAcceptsEverything) {
  EXPECT_EQ(classify_accept(containerd_accept), accepts_all);
  EXPECT_EQ(accept_for(accepts_all), containerd_accept);
}

TEST(AcceptClass, RepeatedLinesJoinedAsOneAreTheSameClass) {
  // skopeo and the CNCF registry send one Accept line per type; the server joins them.
  const std::string joined = std::string(oci_index) + ", " + std::string(oci_manifest);
  EXPECT_EQ(classify_accept(joined), accepts_oci_index | accepts_oci_manifest);
  EXPECT_EQ(classify_accept(std::string(oci_manifest) + ",  " + std::string(oci_index)),
            accepts_oci_index | accepts_oci_manifest);
}

TEST(AcceptClass, ParametersCaseAndRefusals) {
  EXPECT_EQ(classify_accept("Application/VND.Docker.Distribution.Manifest.V2+JSON; q=0.9"), accepts_docker_manifest);
  // q=0 is not a refusal to the registry (it serves the index all the same), so not to Berth.
  EXPECT_EQ(classify_accept(std::string(docker_manifest) + ", " + std::string(oci_index) + ";q=0"),
            accepts_docker_manifest | accepts_oci_index);
  EXPECT_EQ(classify_accept(std::string(oci_index) + ";q=0.000"), accepts_oci_index);
  EXPECT_EQ(classify_accept(std::string(oci_index) + ";q=0.5"), accepts_oci_index);
  EXPECT_EQ(classify_accept("application/*"), accepts_wildcard);
  EXPECT_EQ(classify_accept("*/*"), accepts_wildcard);
}

TEST(AcceptClass, UnknownTypesOnlyIsClassZero) {
  EXPECT_EQ(classify_accept("application/vnd.docker.distribution.manifest.v1+prettyjws"), 0u);
  EXPECT_EQ(classify_accept(""), 0u);
  EXPECT_EQ(accept_for(0), "");
}

TEST(AcceptClass, WhatAClassMayBeGiven) {
  EXPECT_TRUE(class_accepts(accepts_docker_manifest, docker_manifest));
  EXPECT_FALSE(class_accepts(accepts_docker_manifest, oci_index));
  EXPECT_FALSE(class_accepts(accepts_docker_manifest | accepts_docker_list, oci_index));
  EXPECT_FALSE(class_accepts(accepts_docker_manifest | accepts_wildcard, oci_index)) << "a wildcard names no type";
  EXPECT_FALSE(class_accepts(accepts_wildcard, oci_manifest));
  EXPECT_TRUE(class_accepts(accepts_all, oci_index));
  EXPECT_FALSE(class_accepts(accepts_oci_index, "application/vnd.example.thing+json"));
  EXPECT_EQ(accept_for(accepts_docker_manifest | accepts_wildcard), std::string(docker_manifest) + ", */*");
}

TEST(MediaType, GrammarAndManifestTypes) {
  EXPECT_TRUE(valid("application/vnd.oci.image.manifest.v1+json"));
  EXPECT_FALSE(valid("application/octet-stream registry.example.internal/lib/b"));
  EXPECT_FALSE(valid("text/html; charset=utf-8"));
  EXPECT_FALSE(valid("/json"));
  EXPECT_FALSE(valid("application/"));
  EXPECT_FALSE(valid(std::string(128, 'a') + "/b"));
  EXPECT_EQ(of_manifest("application/vnd.docker.distribution.manifest.v2+json", "{}"),
            "application/vnd.docker.distribution.manifest.v2+json");
  EXPECT_EQ(of_manifest("application/octet-stream", R"({"mediaType":"application/vnd.oci.image.index.v1+json"})"),
            "application/vnd.oci.image.index.v1+json");
  EXPECT_EQ(of_manifest("", R"({"mediaType":"x y/z"})"), std::string(oci_manifest)) << "never outside the grammar";
  EXPECT_EQ(of_manifest("bad type", "not json"), std::string(oci_manifest));
}

namespace {
// A signed schema-1 manifest as libtrust lays it out: the payload up to its final
// brace, then "signatures", each protected header naming that cut and the tail.
std::string jws_protected(std::size_t length, std::string_view tail_b64url) {
  std::string header = R"({"formatLength":)" + std::to_string(length) + R"(,"formatTail":")" +
                       std::string(tail_b64url) + R"(","time":"2026-01-01T00:00:00Z"})";
  std::string b64 = berth::core::base64_encode(header);
  for (char& c : b64) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!b64.empty() && b64.back() == '=') b64.pop_back();
  return b64;
}
}  // namespace

TEST(Schema1, PayloadIsTheSignedBytesWithoutTheSignatures) {
  const std::string payload = "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/legacy\"\n}";
  const std::size_t cut = payload.size() - 2;  // before "\n}"
  const std::string sig =
      R"({"header":{"alg":"ES256"},"signature":"abc","protected":")" + jws_protected(cut, "Cn0") + R"("})";
  const std::string signed_bytes = payload.substr(0, cut) + ",\n   \"signatures\": [" + sig + ", " + sig + "]\n}";
  EXPECT_EQ(schema1_payload(signed_bytes), payload);
}

TEST(Schema1, AnythingElseHasNoPayload) {
  const std::string payload = R"({"schemaVersion":1})";
  const auto with = [&](const std::string& prot1, const std::string& prot2) {
    return payload.substr(0, payload.size() - 1) + R"(,"signatures":[{"protected":")" + prot1 + R"("},{"protected":")" +
           prot2 + R"("}]})";
  };
  const auto good = jws_protected(payload.size() - 1, "fQ");
  EXPECT_TRUE(schema1_payload(with(good, good)));
  EXPECT_FALSE(schema1_payload(with(good, jws_protected(payload.size() - 2, "fQ")))) << "signatures disagree";
  EXPECT_FALSE(schema1_payload(with(good, jws_protected(100000, "fQ")))) << "cut past the end";
  EXPECT_FALSE(schema1_payload(with(good, good + "+"))) << "standard alphabet in a JWS";
  EXPECT_FALSE(schema1_payload(with(good, "e30"))) << "protected header without the cut";  // "{}"
  EXPECT_FALSE(schema1_payload(R"({"schemaVersion":2,"signatures":[]})"));
  EXPECT_FALSE(schema1_payload(R"({"schemaVersion":2})"));
  EXPECT_FALSE(schema1_payload("not json"));
}
