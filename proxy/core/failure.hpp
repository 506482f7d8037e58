#pragma once
// Every way Berth refuses or fails a request, and the one table from a failure to
// the HTTP status and OCI error code the client sees. Code that fails a request
// names the failure and says why in words; only this table decides status and code.
#include <string>
#include <string_view>

#include "core/oci_error.hpp"

namespace berth::core {

enum class failure {
  // The request itself.
  bad_request,         // 400 UNSUPPORTED: malformed HTTP
  target_too_long,     // 414 NAME_INVALID
  name_invalid,        // 400 NAME_INVALID: the path, ns or repository name
  digest_invalid,      // 400 DIGEST_INVALID
  reference_invalid,   // 400 MANIFEST_INVALID: a tag, or a parameter that cannot be one
  not_an_endpoint,     // 404 UNSUPPORTED: push, catalog, uploads, anything else
  method_not_allowed,  // 405 UNSUPPORTED
  headers_too_large,   // 431 UNSUPPORTED
  body_too_large,      // 413 UNSUPPORTED
  // What this node mirrors.
  not_mirrored,        // 404 NAME_UNKNOWN: no such registry, or a repository outside the allowlist
  manifest_unknown,    // 404 MANIFEST_UNKNOWN
  blob_unknown,        // 404 BLOB_UNKNOWN
  repository_unknown,  // 404 NAME_UNKNOWN
  // The upstream's answers (its status is passed on where it says more).
  upstream_unauthorized,  // 401 UNAUTHORIZED: Berth's own credentials were refused
  upstream_denied,        // 403 DENIED
  upstream_policy,        // 412 DENIED: Harbor's pull policy (unscanned, vulnerable, unsigned)
  upstream_rate_limited,  // 429 TOOMANYREQUESTS
  upstream_failed,        // 502 UNAVAILABLE: a 5xx (its own status passed on)
  upstream_other,         // 502 UNKNOWN: any other status (passed on)
  upstream_unreachable,   // 502 UNAVAILABLE: connect, TLS, a broken response
  upstream_timeout,       // 504 UNAVAILABLE
  upstream_busy,          // 503 UNAVAILABLE: no upstream connection free; Retry-After
  upstream_wrong_bytes,   // 502 DIGEST_INVALID: bytes that do not match their digest
  upstream_too_large,     // 502 MANIFEST_INVALID: a manifest past the size limit
  // This node.
  cache_unavailable,  // 503 UNAVAILABLE: the cache cannot read a blob now; Retry-After
  overloaded,         // 503 UNAVAILABLE: too many connections; Retry-After
  peer_unauthorized,  // 401 UNAUTHORIZED: a peer request without a valid cluster signature
  internal,           // 500 UNKNOWN
};

struct failure_answer {
  unsigned status;
  std::string_view code;
};
// The table.
failure_answer answer_for(failure f);
// The client's error for `f`; `status` (nonzero) passes on an upstream's own status.
oci_error error(failure f, std::string message, unsigned status = 0);

}  // namespace berth::core
