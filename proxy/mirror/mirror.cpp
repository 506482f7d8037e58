#include "mirror/mirror.hpp"

#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>

#include "core/log.hpp"
#include "core/media_types.hpp"
#include "mirror/answers.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

// If-None-Match (RFC 9110 13.1.2) against a digest's entity tag: a list of tags,
// weak or strong, quoted (the registry also takes the bare digest), or "*".
bool etag_matches(std::string_view header, std::string_view digest) {
  while (!header.empty()) {
    const auto comma = header.find(',');
    auto tag = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view() : header.substr(comma + 1);
    while (!tag.empty() && (tag.front() == ' ' || tag.front() == '\t')) tag.remove_prefix(1);
    while (!tag.empty() && (tag.back() == ' ' || tag.back() == '\t')) tag.remove_suffix(1);
    if (tag.starts_with("W/")) tag.remove_prefix(2);
    if (tag == "*") return true;
    if (tag.size() >= 2 && tag.front() == '"' && tag.back() == '"') tag = tag.substr(1, tag.size() - 2);
    if (tag == digest) return true;
  }
  return false;
}

// Link: <url>; rel="next" -> the same path and query on this proxy, with ns kept.
std::string rewrite_link(std::string_view link, const std::string& ns) {
  const auto open = link.find('<');
  const auto close = link.find('>', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) return {};
  auto parsed = boost::urls::parse_uri_reference(link.substr(open + 1, close - open - 1));
  if (!parsed) return {};
  boost::urls::url u = *parsed;
  u.remove_origin();
  if (!ns.empty()) u.params().set("ns", ns);
  return "<" + std::string(u.encoded_target()) + ">" + std::string(link.substr(close + 1));
}

}  // namespace

mirror::mirror(const registry_table& table, upstream::fetcher& upstream, metrics::registry& metrics,
               store::blob_store* store, meta::cache* meta, mirror_options options)
    : table_(table),
      upstream_(upstream),
      options_(options),
      manifests_(upstream, metrics, meta, options_),
      blobs_(upstream, metrics, store, options_) {}

asio::awaitable<core::reply> mirror::serve(const pull_request& req) {
  if (req.kind == endpoint::base) {
    // A ping for a registry Berth does not mirror says so, as every other path does.
    if (!req.ns.empty() && table_.find(req.ns) == nullptr) {
      co_return core::error_reply(core::failure::not_mirrored, "registry " + req.ns + " is not mirrored here");
    }
    core::reply r;
    r.headers.add("Content-Type", "application/json");
    r.body = "{}";
    co_return r;
  }
  auto* reg = table_.find(req.ns);
  if (reg == nullptr) {
    co_return core::error_reply(core::failure::not_mirrored,
                                req.ns.empty() ? std::string("no ns parameter and no default_registry configured")
                                               : "registry " + req.ns + " is not mirrored here");
  }
  if (!registry_table::allows(*reg, req.name)) {
    auto r = core::error_reply(core::failure::not_mirrored,
                               "repository " + req.name + " is not allowed through this mirror");
    r.registry = reg->id();
    co_return r;
  }
  core::reply r;
  switch (req.kind) {
    case endpoint::manifest: r = co_await manifests_.serve(*reg, req); break;
    case endpoint::blob: r = co_await blobs_.serve(*reg, req); break;
    default: r = co_await listing(*reg, req); break;
  }
  r.registry = reg->id();
  // Manifests and blobs are named by their digest: that is their entity tag, as the
  // registry sends it, and a client that has it gets 304 with no body.
  if ((req.kind == endpoint::manifest || req.kind == endpoint::blob) && (r.status == 200 || r.status == 206)) {
    if (const auto digest = r.headers.get("Docker-Content-Digest")) {
      const std::string d(*digest);
      if (!r.headers.get("ETag")) r.headers.set("ETag", "\"" + d + "\"");
      if (r.status == 200 && !req.if_none_match.empty() && etag_matches(req.if_none_match, d)) {
        r.status = 304;
        r.body.clear();
        r.stream.reset();
        r.head_length.reset();
        r.headers.erase("Content-Range");
      }
    }
  }
  co_return r;
}

asio::awaitable<core::reply> mirror::listing(upstream::registry& reg, const pull_request& req) {
  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.accept = req.kind == endpoint::referrers ? std::string(core::media_type::oci_index) : "application/json";

  error_code ec;
  auto res = co_await upstream_.fetch(reg, up, ec);
  if (ec) co_return transport_error(ec, reg.id());
  if (res.status != 200) {
    co_return co_await upstream_error_reply(res, req, options_.max_error_body_bytes);
  }

  core::reply r;
  r.upstream_status = res.status;
  copy_headers(res.headers, r.headers);
  if (auto link = res.headers.get("Link")) {
    if (auto rewritten = rewrite_link(*link, req.ns); !rewritten.empty() && rewritten.size() <= k_max_passed_header) {
      r.headers.add("Link", rewritten);
    } else if (!rewritten.empty()) {
      log::warn("upstream_header_dropped", {{"header", "Link"}, {"bytes", rewritten.size()}});
    }
  }
  co_await res.read_all(r.body, options_.max_tags_body_bytes, ec);
  if (ec) co_return transport_error(ec, reg.id());
  co_return r;
}

}  // namespace berth::mirror
