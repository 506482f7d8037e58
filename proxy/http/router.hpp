#pragma once
// The router: a pure function from (method, target) to a validated pull request
// or the OCI error the client gets. No I/O; tests call it directly.
#include <string>
#include <string_view>
#include <variant>

#include "core/failure.hpp"
#include "core/oci_error.hpp"
#include "mirror/request.hpp"

namespace berth::http {

inline constexpr std::size_t k_max_target_length = 4096;

struct routed {
  std::variant<mirror::pull_request, core::oci_error> result;
  std::string route;  // metric label: base, manifest, blob, tags, referrers, invalid, unsupported
  std::string ns;     // decoded ns, also when the request is rejected (for the log)

  bool ok() const { return std::holds_alternative<mirror::pull_request>(result); }
  const mirror::pull_request& request() const { return std::get<mirror::pull_request>(result); }
  const core::oci_error& error() const { return std::get<core::oci_error>(result); }
};

routed route(std::string_view method, std::string_view target);

}  // namespace berth::http
