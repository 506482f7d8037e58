#include "http/router.hpp"

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <vector>

#include "core/reference.hpp"

namespace berth::http {
namespace {

routed fail(std::string route, core::oci_error e, std::string ns = {}) {
  return routed{std::move(e), std::move(route), std::move(ns)};
}

bool contains_ci(std::string_view hay, std::string_view needle) {
  if (needle.size() > hay.size()) return false;
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    bool match = true;
    for (std::size_t j = 0; j < needle.size() && match; ++j) {
      char c = hay[i + j];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      match = c == needle[j];
    }
    if (match) return true;
  }
  return false;
}

bool is_decimal(std::string_view s) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// ns names a registry host: host[:port], DNS characters only.
bool is_valid_ns(std::string_view ns) {
  if (ns.size() > 255) return false;
  for (char c : ns) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

routed route(std::string_view method, std::string_view target) {
  if (target.size() > k_max_target_length) {
    return fail("invalid", core::error(core::failure::target_too_long, "request target is longer than 4096 bytes"));
  }
  auto parsed = boost::urls::parse_origin_form(boost::core::string_view(target.data(), target.size()));
  if (!parsed) return fail("invalid", core::error(core::failure::name_invalid, "malformed request target"));
  const boost::urls::url_view url = *parsed;

  // Encoded slashes and dot segments never reach the grammar checks: reject them
  // as they are written, before any decoding.
  const std::string_view raw_path(url.encoded_path().data(), url.encoded_path().size());
  if (contains_ci(raw_path, "%2f") || contains_ci(raw_path, "%5c") || contains_ci(raw_path, "%2e") ||
      contains_ci(raw_path, "%00")) {
    return fail("invalid",
                core::error(core::failure::name_invalid, "encoded '/', '\\', '.' or NUL in the request path"));
  }
  if (raw_path.find("/./") != std::string_view::npos || raw_path.find("/../") != std::string_view::npos ||
      raw_path.ends_with("/..") || raw_path.ends_with("/.")) {
    return fail("invalid", core::error(core::failure::name_invalid, "dot segment in the request path"));
  }

  mirror::pull_request req;
  std::string ns;
  bool have_ns = false;
  for (auto p : url.params()) {
    const std::string key(p.key);
    if (key == "ns" && !have_ns) {
      ns = std::string(p.value);
      have_ns = true;
    } else if (key == "n" && !req.n) {
      req.n = std::string(p.value);
    } else if (key == "last" && !req.last) {
      req.last = std::string(p.value);
    } else if (key == "artifactType" && !req.artifact_type) {
      req.artifact_type = std::string(p.value);
    }
  }
  if (!is_valid_ns(ns))
    return fail("invalid", core::error(core::failure::name_invalid, "ns is not a registry host name"));
  req.ns = ns;

  std::vector<std::string> segs;
  for (auto s : url.segments()) segs.emplace_back(s);
  if (segs.empty() || segs[0] != "v2")
    return fail("unsupported", core::error(core::failure::not_an_endpoint, "not an OCI distribution endpoint"), ns);

  const bool head = method == "HEAD";
  const bool get = method == "GET";
  if (!get && !head) {
    return fail("unsupported",
                core::error(core::failure::method_not_allowed,
                            "Berth is a pull-only mirror: " + std::string(method) + " is not supported"),
                ns);
  }
  req.head = head;

  // "/v2/" and "/v2"
  if (segs.size() == 1 || (segs.size() == 2 && segs[1].empty())) {
    req.kind = mirror::endpoint::base;
    return routed{std::move(req), "base", ns};
  }

  // Match from the end, since names may contain any component.
  const std::size_t n = segs.size();
  std::string route_name;
  std::size_t name_end = 0;  // segs[1 .. name_end) is the name
  if (n >= 4 && segs[n - 2] == "tags" && segs[n - 1] == "list") {
    req.kind = mirror::endpoint::tags_list;
    route_name = "tags";
    name_end = n - 2;
  } else if (n >= 4 && segs[n - 2] == "manifests") {
    req.kind = mirror::endpoint::manifest;
    route_name = "manifest";
    name_end = n - 2;
  } else if (n >= 4 && segs[n - 2] == "blobs") {
    req.kind = mirror::endpoint::blob;
    route_name = "blob";
    name_end = n - 2;
  } else if (n >= 4 && segs[n - 2] == "referrers") {
    req.kind = mirror::endpoint::referrers;
    route_name = "referrers";
    name_end = n - 2;
  } else {
    return fail(
        "unsupported",
        core::error(core::failure::not_an_endpoint, "no such endpoint (push, catalog and uploads are not served)"), ns);
  }
  if ((req.kind == mirror::endpoint::tags_list || req.kind == mirror::endpoint::referrers) && head) {
    return fail(route_name, core::error(core::failure::method_not_allowed, "HEAD is not supported on this endpoint"),
                ns);
  }

  for (std::size_t i = 1; i < name_end; ++i) {
    if (i > 1) req.name += '/';
    req.name += segs[i];
  }
  if (!core::is_valid_name(req.name)) {
    return fail(route_name, core::error(core::failure::name_invalid, "invalid repository name"), ns);
  }

  if (req.kind != mirror::endpoint::tags_list) {
    req.reference = segs[n - 1];
    const bool digest_only = req.kind != mirror::endpoint::manifest;
    if (!digest_only && !core::is_valid_tag(req.reference) && !core::parse_digest(req.reference)) {
      // Neither a tag nor a digest names no manifest: 404, as the registry answers
      // (the OCI conformance suite's .INVALID_MANIFEST_NAME), without asking upstream.
      return fail(route_name,
                  core::error(core::failure::manifest_unknown, "no manifest can have this reference: " + req.reference),
                  ns);
    }
    if (digest_only || core::looks_like_digest(req.reference)) {
      core::digest_problem problem{};
      req.digest = core::parse_digest(req.reference, &problem);
      if (!req.digest) {
        const char* why = problem == core::digest_problem::unsupported_algorithm ? "unsupported digest algorithm"
                          : problem == core::digest_problem::bad_encoding
                              ? "digest encoding is not lowercase hex of the right length"
                              : "malformed digest";
        return fail(route_name, core::error(core::failure::digest_invalid, why), ns);
      }
    } else if (!core::is_valid_tag(req.reference)) {
      return fail(route_name, core::error(core::failure::reference_invalid, "invalid tag"), ns);
    }
  } else {
    // The registry ignores an n or last it cannot use; so does Berth (they are not
    // passed on).
    if (req.n && !is_decimal(*req.n)) req.n.reset();
    if (req.last && !req.last->empty() && !core::is_valid_tag(*req.last)) req.last.reset();
  }
  if (req.artifact_type && req.artifact_type->size() > 255) {
    return fail(route_name, core::error(core::failure::reference_invalid, "artifactType is too long"), ns);
  }
  return routed{std::move(req), std::move(route_name), ns};
}

}  // namespace berth::http
