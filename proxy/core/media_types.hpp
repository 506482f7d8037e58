#pragma once
// Media types the proxy needs to name (image-spec media-types.md), and the
// classes of Accept header that decide which manifest a registry returns for a tag.
#include <optional>
#include <string>
#include <string_view>

namespace berth::core::media_type {

inline constexpr std::string_view oci_manifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view oci_index = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view docker_list = "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view docker_schema1_signed = "application/vnd.docker.distribution.manifest.v1+prettyjws";

// containerd's resolve Accept line (core/remotes/docker/resolver.go).
inline constexpr std::string_view containerd_accept =
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

// The same tag gives different bytes for different Accept headers (PROTOCOL.md §2,
// content negotiation): a Docker list becomes its amd64 child, an OCI index a 404.
// An accept class is the set of the four manifest types a client names, plus
// whether it sent a wildcard; two clients of one class get the same answer.
using accept_class = unsigned;
inline constexpr accept_class accepts_docker_manifest = 1;
inline constexpr accept_class accepts_docker_list = 2;
inline constexpr accept_class accepts_oci_manifest = 4;
inline constexpr accept_class accepts_oci_index = 8;
inline constexpr accept_class accepts_wildcard = 16;  // */* or application/*
inline constexpr accept_class accepts_all = 31;       // containerd's line

// A bare media type per RFC 6838 section 4.2: type "/" subtype, each 1-127 of
// ALPHA DIGIT ! # $ & - ^ _ . + and starting with a letter or digit. No
// parameters, no spaces.
bool valid(std::string_view type);

// The media type of manifest bytes: the upstream's bare Content-Type when it is a
// valid one other than application/octet-stream, else the document's own mediaType
// field when valid, else an OCI manifest. Never anything outside the grammar above.
std::string of_manifest(std::string_view content_type, std::string_view body);

// The class of an Accept header (all lines joined with ", "). Parameters, q=0
// included, do not matter: the registry does not read them either.
accept_class classify_accept(std::string_view accept);
// An Accept header naming exactly the class's types, in containerd's order.
std::string accept_for(accept_class c);
// Whether a client of class `c` may be given a manifest of `type`: one of the four
// only when the client named it (a wildcard is not enough, as for the registry).
bool class_accepts(accept_class c, std::string_view type);

// Docker schema 1, signed. A registry that converts a schema-2 manifest to schema 1
// for an old client (by tag, when the client names no schema-2 type) signs it anew
// and announces the sha256 of the payload its signatures cover, not of the bytes it
// sends (distribution's convertSchema2Manifest). That payload is the first
// `formatLength` bytes followed by the decoded `formatTail` of each signature's
// protected header (libtrust's JWS). nullopt when the bytes are not such a manifest
// or its signatures disagree about the payload.
std::optional<std::string> schema1_payload(std::string_view signed_bytes);

}  // namespace berth::core::media_type
