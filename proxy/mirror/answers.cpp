#include "mirror/answers.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <string_view>
#include <tuple>

#include "core/log.hpp"
#include "core/range.hpp"
#include "metrics/metrics.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

using boost::system::error_code;

namespace {

constexpr std::string_view k_passed_headers[] = {
    "Content-Type", "Docker-Content-Digest", "Content-Range", "Accept-Ranges",
    "ETag",         "Last-Modified",         "Retry-After",   "OCI-Filters-Applied"};

// The OCI error for an upstream status that came without a usable OCI body.
core::oci_error error_for_status(unsigned status, endpoint kind, const std::string& what) {
  using core::failure;
  switch (status) {
    case 401:
      return core::error(failure::upstream_unauthorized,
                         "the upstream registry refused Berth's credentials for " + what);
    case 403: return core::error(failure::upstream_denied, "the upstream registry denied access to " + what);
    case 404:
      if (kind == endpoint::blob)
        return core::error(failure::blob_unknown, "blob unknown to the upstream registry: " + what);
      if (kind == endpoint::tags_list)
        return core::error(failure::repository_unknown, "repository unknown to the upstream registry: " + what);
      return core::error(failure::manifest_unknown, "manifest unknown to the upstream registry: " + what);
    case 412: return core::error(failure::upstream_policy, "the upstream registry's policy forbids pulling " + what);
    case 429: return core::error(failure::upstream_rate_limited, "the upstream registry is rate limiting: " + what);
    default: break;
  }
  if (status >= 500) {
    return core::error(failure::upstream_failed,
                       "the upstream registry failed (HTTP " + std::to_string(status) + ") for " + what, status);
  }
  return core::error(failure::upstream_other,
                     "the upstream registry answered HTTP " + std::to_string(status) + " for " + what, status);
}

bool is_oci_error_body(const std::string& body) {
  error_code ec;
  auto v = boost::json::parse(body, ec);
  if (ec || !v.is_object()) return false;
  const auto* errors = v.get_object().if_contains("errors");
  return errors && errors->is_array();
}

}  // namespace

void copy_headers(const core::headers& from, core::headers& to) {
  for (const auto& f : from.fields()) {
    for (auto name : k_passed_headers) {
      if (!core::iequals(f.first, name)) continue;
      if (f.second.size() > k_max_passed_header) {
        log::warn("upstream_header_dropped", {{"header", std::string(name)}, {"bytes", f.second.size()}});
        continue;
      }
      to.add(std::string(name), f.second);
    }
  }
}

std::optional<std::uint64_t> content_length(const core::headers& h) {
  auto v = h.get("Content-Length");
  if (!v || v->empty()) return std::nullopt;
  std::uint64_t n = 0;
  for (char c : *v) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

std::string bare_media_type(const core::headers& h) {
  auto v = h.get("Content-Type");
  if (!v) return {};
  auto t = v->substr(0, v->find(';'));
  while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
  return std::string(t);
}

core::reply transport_error(const error_code& ec, const std::string& registry) {
  core::reply r;
  if (ec == upstream::errc::timeout) {
    r = core::error_reply(core::failure::upstream_timeout, "upstream registry " + registry + " timed out");
  } else if (ec == upstream::errc::pool_exhausted) {
    r = core::error_reply(core::failure::upstream_busy,
                          "no connection to upstream registry " + registry + " is free; retry");
    r.headers.add("Retry-After", "1");
  } else {
    r = core::error_reply(core::failure::upstream_unreachable, "upstream registry " + registry + ": " + ec.message());
  }
  r.registry = registry;
  return r;
}

boost::asio::awaitable<core::reply> upstream_error_reply(upstream::response& res, const pull_request& req,
                                                         std::size_t limit) {
  const std::string what = req.name + (req.reference.empty() ? "" : (req.digest ? "@" : ":") + req.reference);
  core::reply r;
  r.status = res.status;
  r.upstream_status = res.status;
  if (auto ra = res.headers.get("Retry-After")) r.headers.add("Retry-After", std::string(*ra));
  // A 416's Content-Range (bytes */<size>) tells the client the blob's size.
  if (auto cr = res.headers.get("Content-Range"); cr && res.status == 416)
    r.headers.add("Content-Range", std::string(*cr));
  std::string body;
  error_code ec;
  co_await res.read_all(body, limit, ec);
  if (!req.head && !ec && !body.empty() && is_oci_error_body(body)) {
    r.headers.add("Content-Type", "application/json");
    r.body = std::move(body);
    co_return r;
  }
  r.error = error_for_status(res.status, req.kind, what);
  r.status = r.error->status;
  co_return r;
}

std::string upstream_target(const pull_request& req) {
  std::string t = "/v2/" + req.name + "/";
  switch (req.kind) {
    case endpoint::manifest: t += "manifests/" + req.reference; break;
    case endpoint::blob: t += "blobs/" + req.reference; break;
    case endpoint::tags_list: t += "tags/list"; break;
    case endpoint::referrers: t += "referrers/" + req.reference; break;
    case endpoint::base: return "/v2/";
  }
  boost::urls::url u = boost::urls::parse_uri_reference(t).value();
  if (req.n) u.params().append({"n", *req.n});
  if (req.last) u.params().append({"last", *req.last});
  if (req.artifact_type) u.params().append({"artifactType", *req.artifact_type});
  return std::string(u.encoded_target());
}

core::verifying_body::mismatch_fn report_mismatch(metrics::registry& metrics, std::string registry,
                                                  std::string expected, std::string kind) {
  return [&metrics, registry = std::move(registry), expected = std::move(expected),
          kind = std::move(kind)](const std::string& got) {
    metrics.digest_mismatch(registry, kind);
    log::error("digest_mismatch", {{"registry", registry}, {"kind", kind}, {"expected", expected}, {"got", got}});
  };
}

void shape_unsized_reply(core::reply& r, const pull_request& req, const std::string& media_type) {
  r.headers.set("Content-Type", media_type.empty() ? std::string("application/octet-stream") : media_type);
  r.headers.set("Docker-Content-Digest", req.reference);
  r.headers.set("Accept-Ranges", "bytes");
}

bool shape_blob_reply(core::reply& r, const pull_request& req, std::uint64_t size, const std::string& media_type,
                      std::uint64_t& first, std::uint64_t& end) {
  shape_unsized_reply(r, req, media_type);
  first = 0;
  end = size;
  if (auto range = req.head ? std::nullopt : core::parse_byte_range(req.range)) {
    const auto span = range->resolve(size);
    if (!span) {
      r.status = 416;
      r.headers.set("Content-Range", "bytes */" + std::to_string(size));
      return false;
    }
    std::tie(first, end) = *span;
    r.status = 206;
    r.headers.set("Content-Range",
                  "bytes " + std::to_string(first) + "-" + std::to_string(end - 1) + "/" + std::to_string(size));
  }
  r.head_length = end - first;
  return true;
}

}  // namespace berth::mirror
