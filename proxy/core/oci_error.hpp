#pragma once
// An OCI distribution error as the client sees it: an HTTP status and one entry of
// {"errors":[{"code":...,"message":...}]}. http/ turns it into bytes; core/failure.hpp
// decides status and code.
#include <string>

namespace berth::core {

struct oci_error {
  unsigned status = 500;
  std::string code;     // BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_INVALID, ... (spec.md error codes)
  std::string message;  // for humans; never holds a secret
};

}  // namespace berth::core
