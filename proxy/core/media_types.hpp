#pragma once
// Media types the proxy needs to name (image-spec media-types.md).
#include <string_view>

namespace berth::core::media_type {

inline constexpr std::string_view oci_manifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view oci_index = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view docker_manifest = "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view docker_list = "application/vnd.docker.distribution.manifest.list.v2+json";

// containerd's resolve Accept line (core/remotes/docker/resolver.go).
inline constexpr std::string_view containerd_accept =
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

}  // namespace berth::core::media_type
