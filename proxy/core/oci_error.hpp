#pragma once
// An OCI distribution error as the client sees it: an HTTP status and one entry of
// {"errors":[{"code":...,"message":...}]}. http/ turns it into bytes.
#include <string>

namespace berth::core {

struct oci_error {
  unsigned status = 500;
  std::string code;     // BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_INVALID, ... (spec.md error codes)
  std::string message;  // for humans; never holds a secret
};

inline oci_error name_invalid(std::string message) {
  return {400, "NAME_INVALID", std::move(message)};
}
inline oci_error name_unknown(std::string message) {
  return {404, "NAME_UNKNOWN", std::move(message)};
}
inline oci_error digest_invalid(std::string message) {
  return {400, "DIGEST_INVALID", std::move(message)};
}
inline oci_error manifest_invalid(std::string message) {
  return {400, "MANIFEST_INVALID", std::move(message)};
}
inline oci_error unsupported(std::string message) {
  return {405, "UNSUPPORTED", std::move(message)};
}

}  // namespace berth::core
