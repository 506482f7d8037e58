#include "core/failure.hpp"

namespace berth::core {

failure_answer answer_for(failure f) {
  switch (f) {
    case failure::bad_request: return {400, "UNSUPPORTED"};
    case failure::target_too_long: return {414, "NAME_INVALID"};
    case failure::name_invalid: return {400, "NAME_INVALID"};
    case failure::digest_invalid: return {400, "DIGEST_INVALID"};
    case failure::reference_invalid: return {400, "MANIFEST_INVALID"};
    case failure::not_an_endpoint: return {404, "UNSUPPORTED"};
    case failure::method_not_allowed: return {405, "UNSUPPORTED"};
    case failure::headers_too_large: return {431, "UNSUPPORTED"};
    case failure::body_too_large: return {413, "UNSUPPORTED"};
    case failure::not_mirrored: return {404, "NAME_UNKNOWN"};
    case failure::manifest_unknown: return {404, "MANIFEST_UNKNOWN"};
    case failure::blob_unknown: return {404, "BLOB_UNKNOWN"};
    case failure::repository_unknown: return {404, "NAME_UNKNOWN"};
    case failure::upstream_unauthorized: return {401, "UNAUTHORIZED"};
    case failure::upstream_denied: return {403, "DENIED"};
    case failure::upstream_policy: return {412, "DENIED"};
    case failure::upstream_rate_limited: return {429, "TOOMANYREQUESTS"};
    case failure::upstream_failed: return {502, "UNAVAILABLE"};
    case failure::upstream_other: return {502, "UNKNOWN"};
    case failure::upstream_unreachable: return {502, "UNAVAILABLE"};
    case failure::upstream_timeout: return {504, "UNAVAILABLE"};
    case failure::upstream_busy: return {503, "UNAVAILABLE"};
    case failure::upstream_wrong_bytes: return {502, "DIGEST_INVALID"};
    case failure::upstream_too_large: return {502, "MANIFEST_INVALID"};
    case failure::cache_unavailable:
    case failure::overloaded: return {503, "UNAVAILABLE"};
    case failure::peer_unauthorized: return {401, "UNAUTHORIZED"};
    case failure::internal: return {500, "UNKNOWN"};
  }
  return {500, "UNKNOWN"};
}

oci_error error(failure f, std::string message, unsigned status) {
  const auto a = answer_for(f);
  return {status != 0 ? status : a.status, std::string(a.code), std::move(message)};
}

}  // namespace berth::core
