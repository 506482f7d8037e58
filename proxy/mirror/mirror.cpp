#include "mirror/mirror.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <tuple>

#include "core/clock.hpp"
#include "core/hasher.hpp"
#include "core/log.hpp"
#include "core/media_types.hpp"
#include "core/min_rate_body.hpp"
#include "core/range.hpp"
#include "core/spawn.hpp"
#include "core/verifying_body.hpp"
#include "meta/cache.hpp"
#include "metrics/metrics.hpp"
#include "store/blob_store.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

// Response headers worth passing from the upstream to the client. Everything
// else (Set-Cookie, WWW-Authenticate, Location, hop-by-hop fields) stays behind.
constexpr std::string_view k_passed_headers[] = {
    "Content-Type", "Docker-Content-Digest", "Content-Range", "Accept-Ranges",
    "ETag",         "Last-Modified",         "Retry-After",   "OCI-Filters-Applied"};

// The longest header value taken from an upstream (or built from a client's input,
// as the rewritten Link is). Longer ones are dropped: no registry sends them, and
// past 64 KiB the reply could not be written at all.
constexpr std::size_t k_max_passed_header = 8 * 1024;

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

// The OCI error code for an upstream status that came without a usable OCI body.
core::oci_error error_for_status(unsigned status, endpoint kind, const std::string& what) {
  switch (status) {
    case 401: return {401, "UNAUTHORIZED", "the upstream registry refused Berth's credentials for " + what};
    case 403: return {403, "DENIED", "the upstream registry denied access to " + what};
    case 404:
      if (kind == endpoint::blob) return {404, "BLOB_UNKNOWN", "blob unknown to the upstream registry: " + what};
      if (kind == endpoint::tags_list)
        return {404, "NAME_UNKNOWN", "repository unknown to the upstream registry: " + what};
      return {404, "MANIFEST_UNKNOWN", "manifest unknown to the upstream registry: " + what};
    case 412: return {412, "DENIED", "the upstream registry's policy forbids pulling " + what};
    case 429: return {429, "TOOMANYREQUESTS", "the upstream registry is rate limiting: " + what};
    default: break;
  }
  if (status >= 500)
    return {status, "UNAVAILABLE", "the upstream registry failed (HTTP " + std::to_string(status) + ") for " + what};
  return {status, "UNKNOWN", "the upstream registry answered HTTP " + std::to_string(status) + " for " + what};
}

core::reply transport_error(const error_code& ec, const std::string& registry) {
  core::reply r;
  if (ec == upstream::errc::timeout) {
    r = core::error_reply({504, "UNAVAILABLE", "upstream registry " + registry + " timed out"});
  } else if (ec == upstream::errc::pool_exhausted) {
    r = core::error_reply({503, "UNAVAILABLE", "no connection to upstream registry " + registry + " is free; retry"});
    r.headers.add("Retry-After", "1");
  } else {
    r = core::error_reply({502, "UNAVAILABLE", "upstream registry " + registry + ": " + ec.message()});
  }
  r.registry = registry;
  return r;
}

bool is_oci_error_body(const std::string& body) {
  error_code ec;
  auto v = boost::json::parse(body, ec);
  if (ec || !v.is_object()) return false;
  const auto* errors = v.get_object().if_contains("errors");
  return errors && errors->is_array();
}

// What a verifying body does when the bytes are wrong: count and log it.
core::verifying_body::mismatch_fn report_mismatch(metrics::registry& metrics, std::string registry,
                                                  std::string expected, std::string kind) {
  return [&metrics, registry = std::move(registry), expected = std::move(expected),
          kind = std::move(kind)](const std::string& got) {
    metrics.digest_mismatch(registry, kind);
    log::error("digest_mismatch", {{"registry", registry}, {"kind", kind}, {"expected", expected}, {"got", got}});
  };
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

mirror::mirror(const registry_table& table, upstream::client& client, metrics::registry& metrics,
               store::blob_store* store, meta::cache* meta, mirror_options options)
    : table_(table), client_(client), metrics_(metrics), store_(store), meta_(meta), options_(options) {}

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

}  // namespace

asio::awaitable<core::reply> mirror::serve(const pull_request& req) {
  if (req.kind == endpoint::base) {
    // A ping for a registry Berth does not mirror says so, as every other path does.
    if (!req.ns.empty() && table_.find(req.ns) == nullptr) {
      co_return core::error_reply(core::name_unknown("registry " + req.ns + " is not mirrored here"));
    }
    core::reply r;
    r.headers.add("Content-Type", "application/json");
    r.body = "{}";
    co_return r;
  }
  auto* reg = table_.find(req.ns);
  if (reg == nullptr) {
    co_return core::error_reply(
        core::name_unknown(req.ns.empty() ? std::string("no ns parameter and no default_registry configured")
                                          : "registry " + req.ns + " is not mirrored here"));
  }
  if (!registry_table::allows(*reg, req.name)) {
    auto r = core::error_reply(core::name_unknown("repository " + req.name + " is not allowed through this mirror"));
    r.registry = reg->id();
    co_return r;
  }
  core::reply r;
  switch (req.kind) {
    case endpoint::manifest: r = co_await manifest(*reg, req); break;
    case endpoint::blob: r = co_await blob(*reg, req); break;
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

namespace {

// Turns an upstream error status into the client's reply. An OCI JSON body from
// the upstream (Harbor's PROJECTPOLICYVIOLATION among them) is passed through intact.
asio::awaitable<core::reply> upstream_error_reply(upstream::response& res, const pull_request& req, std::size_t limit) {
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

}  // namespace

namespace {

// Content-Type without parameters (containerd strips them too).
std::string bare_media_type(const core::headers& h) {
  auto v = h.get("Content-Type");
  if (!v) return {};
  auto t = v->substr(0, v->find(';'));
  while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
  return std::string(t);
}

meta::fetched::result classify_status(unsigned status) {
  if (status == 404) return meta::fetched::result::not_found;
  if (status >= 500 || status == 429) return meta::fetched::result::unavailable;
  return meta::fetched::result::refused;
}

meta::fetched unavailable(core::reply r) {
  meta::fetched f;
  f.status = meta::fetched::result::unavailable;
  f.reply = std::move(r);
  return f;
}

}  // namespace

asio::awaitable<core::reply> mirror::manifest(upstream::registry& reg, const pull_request& req) {
  namespace mt = core::media_type;
  const auto cls = mt::classify_accept(req.accept);
  // A client naming none of the four manifest types (no Accept at all, or schema 1)
  // is passed through: the registry answers it with a schema-1 conversion or an
  // error, neither of which the cache can vouch for.
  if (meta_ == nullptr || cls == 0) co_return co_await upstream_manifest(reg, req);

  const std::string& registry = reg.id();
  const auto k = req.digest ? meta::key::digest(registry, req.name, req.reference)
                            : meta::key::tag(registry, req.name, req.reference, cls);
  const auto ttl = req.digest ? meta_->options().tag_ttl : meta_->options().ttl_for(req.reference);
  const std::string_view kind = req.digest ? "digest" : "tag";
  const meta::fetch_fn fetch = [this, &reg, &req, cls](const std::optional<meta::entry>& known) {
    return fetch_manifest(reg, req, cls, known);
  };
  auto found = co_await meta_->resolve(k, ttl, registry, kind, fetch);
  if (!found.answer) co_return std::move(found.reply);
  const meta::entry& e = *found.answer;
  if (!e.found) {
    co_return core::error_reply({404, "MANIFEST_UNKNOWN",
                                 "manifest unknown to the upstream registry: " + req.name + (req.digest ? "@" : ":") +
                                     req.reference + " (answer remembered for " +
                                     std::to_string(meta_->options().negative_ttl.count() / 1000) + "s)"});
  }
  // A digest's bytes are fixed, but whether a client that does not accept their
  // type may have them is the upstream's call (an index is never given to a client
  // that did not ask for one).
  if (!mt::class_accepts(cls, e.media_type) || (req.digest && e.digest != req.reference))
    co_return co_await upstream_manifest(reg, req);

  core::reply r;
  r.upstream_status = found.how == meta::outcome::upstream ? 200 : 0;
  r.headers.set("Content-Type", e.media_type);
  r.headers.set("Docker-Content-Digest", e.digest);
  if (req.head) {
    r.head_length = e.size;
    co_return r;
  }
  auto m = co_await meta_->get_manifest(e.digest);
  if (!m) {
    // Known but no longer held anywhere (evicted): fetch the bytes by digest.
    meta::fetched fail;
    m = co_await download_manifest(reg, req, e.digest, cls, fail);
    if (!m) co_return std::move(fail.reply);
  }
  r.body = std::move(m->bytes);
  co_return r;
}

asio::awaitable<std::optional<mirror::manifest_body>> mirror::read_manifest_once(
    upstream::registry& reg, upstream::response& res, const pull_request& req, const std::string& expected,
    core::reply& fail, bool& too_large, bool& mismatch) {
  too_large = false;
  mismatch = false;
  std::string body;
  error_code ec;
  co_await res.read_all(body, options_.max_manifest_bytes, ec);
  if (ec == upstream::errc::body_too_large) {
    too_large = true;
    fail = core::error_reply(
        {502, "MANIFEST_INVALID",
         "upstream manifest is larger than " + std::to_string(options_.max_manifest_bytes) + " bytes"});
    co_return std::nullopt;
  }
  if (ec) {
    fail = transport_error(ec, reg.id());
    co_return std::nullopt;
  }
  const std::string algorithm = expected.empty() ? "sha256" : expected.substr(0, expected.find(':'));
  std::string computed = core::digest_of(body, algorithm);
  if (!expected.empty() && computed != expected) {
    metrics_.digest_mismatch(reg.id(), "manifest");
    log::error("digest_mismatch", {{"registry", reg.id()},
                                   {"kind", "manifest"},
                                   {"repository", req.name},
                                   {"expected", expected},
                                   {"got", computed}});
    fail = core::error_reply({502, "DIGEST_INVALID", "upstream manifest bytes do not match " + expected});
    mismatch = true;
    co_return std::nullopt;
  }
  // By tag, the upstream's Docker-Content-Digest is the only statement of what the
  // bytes should be; bytes that disagree with it were damaged on the way (or the
  // upstream is broken). Either way they are not an answer: containerd would resolve
  // the tag to one digest and then fail to commit these bytes under it.
  if (auto claimed = res.headers.get("Docker-Content-Digest");
      claimed && *claimed != computed && claimed->substr(0, algorithm.size() + 1) == algorithm + ":") {
    // A schema-1 conversion names the digest of what its signatures cover.
    if (const auto payload = core::media_type::schema1_payload(body);
        expected.empty() && payload && core::digest_of(*payload, algorithm) == *claimed) {
      co_return manifest_body{std::move(body), std::string(*claimed), true};
    }
    metrics_.digest_mismatch(reg.id(), "manifest_header");
    log::error("digest_mismatch", {{"registry", reg.id()},
                                   {"kind", "manifest_header"},
                                   {"repository", req.name},
                                   {"reference", req.reference},
                                   {"expected", std::string(*claimed)},
                                   {"got", computed}});
    mismatch = true;
    fail = core::error_reply(
        {502, "DIGEST_INVALID", "upstream manifest bytes do not match the digest the upstream announced for them"});
    co_return std::nullopt;
  }
  co_return manifest_body{std::move(body), std::move(computed), false};
}

asio::awaitable<std::optional<mirror::manifest_body>> mirror::read_manifest(
    upstream::registry& reg, upstream::request& up, upstream::response& res, const pull_request& req,
    const std::string& expected, core::reply& fail, bool& too_large) {
  bool mismatch = false;
  auto body = co_await read_manifest_once(reg, res, req, expected, fail, too_large, mismatch);
  if (body || !mismatch) co_return body;
  // Wrong bytes: ask once more (a torn write upstream, a flaky hop), then give up.
  up.method = "GET";
  error_code ec;
  res = co_await client_.fetch(reg, up, ec);
  if (ec) {
    fail = transport_error(ec, reg.id());
    co_return std::nullopt;
  }
  if (res.status != 200) {
    fail = co_await upstream_error_reply(res, req, options_.max_manifest_bytes);
    co_return std::nullopt;
  }
  co_return co_await read_manifest_once(reg, res, req, expected, fail, too_large, mismatch);
}

asio::awaitable<std::optional<meta::manifest>> mirror::download_manifest(upstream::registry& reg,
                                                                         const pull_request& req,
                                                                         const std::string& digest,
                                                                         unsigned accept_class, meta::fetched& fail) {
  pull_request by_digest = req;
  by_digest.reference = digest;
  by_digest.digest = core::parse_digest(digest);
  by_digest.head = false;
  upstream::request up;
  up.target = upstream_target(by_digest);
  up.repository = req.name;
  up.accept = core::media_type::accept_for(accept_class);
  error_code ec;
  auto res = co_await client_.fetch(reg, up, ec);
  if (ec) {
    fail = unavailable(transport_error(ec, reg.id()));
    co_return std::nullopt;
  }
  if (res.status != 200) {
    fail.status = classify_status(res.status);
    fail.reply = co_await upstream_error_reply(res, req, options_.max_manifest_bytes);
    co_return std::nullopt;
  }
  bool too_large = false;
  auto body = co_await read_manifest(reg, up, res, req, digest, fail.reply, too_large);
  if (!body) {
    fail.status = too_large ? meta::fetched::result::refused : meta::fetched::result::unavailable;
    co_return std::nullopt;
  }
  meta::manifest m{core::media_type::of_manifest(bare_media_type(res.headers), body->bytes), std::move(body->bytes)};
  co_await meta_->put_manifest(digest, m);
  co_return m;
}

asio::awaitable<meta::fetched> mirror::fetch_manifest(upstream::registry& reg, const pull_request& req,
                                                      unsigned accept_class, const std::optional<meta::entry>& known) {
  meta::fetched out;
  std::optional<meta::manifest> held;
  if (known && known->found) held = co_await meta_->get_manifest(known->digest);

  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.accept = core::media_type::accept_for(accept_class);
  up.method = held ? "HEAD" : "GET";
  error_code ec;
  auto res = co_await client_.fetch(reg, up, ec);
  if (ec) co_return unavailable(transport_error(ec, reg.id()));
  const auto claimed = res.headers.get("Docker-Content-Digest");
  const auto length = content_length(res.headers);
  // Some registries refuse HEAD on manifests (405), or leave out the digest or length:
  // GET. So is a schema-1 conversion, never remembered (its digest names no stored
  // manifest, and its bytes are signed anew each time).
  if (held && (res.status == 405 ||
               (res.status == 200 && (!length || (!claimed && !req.digest) ||
                                      bare_media_type(res.headers) == core::media_type::docker_schema1_signed)))) {
    held.reset();
    up.method = "GET";
    res = co_await client_.fetch(reg, up, ec);
    if (ec) co_return unavailable(transport_error(ec, reg.id()));
  }
  // A refused revalidation HEAD has no body; a GET client gets the upstream's own
  // error (Harbor's PROJECTPOLICYVIOLATION message), so ask once more with GET.
  if (held && res.status != 200 && res.status < 500 && !req.head) {
    held.reset();
    up.method = "GET";
    res = co_await client_.fetch(reg, up, ec);
    if (ec) co_return unavailable(transport_error(ec, reg.id()));
  }
  if (res.status != 200) {
    out.status = classify_status(res.status);
    out.reply = co_await upstream_error_reply(res, req, options_.max_manifest_bytes);
    co_return out;
  }

  meta::entry& e = out.answer;
  if (held) {
    // Revalidation: the upstream still serves this reference (Harbor's policies passed).
    e.digest = req.digest ? req.reference : std::string(*claimed);
    if (e.digest == known->digest) {
      e.size = known->size;
      e.media_type = known->media_type;
    } else {
      // The tag moved. Its new manifest may be one we hold already; else GET it.
      auto now_held = co_await meta_->get_manifest(e.digest);
      if (!now_held) now_held = co_await download_manifest(reg, req, e.digest, accept_class, out);
      if (!now_held) co_return out;
      e.size = now_held->bytes.size();
      e.media_type = now_held->media_type;
    }
  } else {
    bool too_large = false;
    const std::string expected =
        req.digest ? req.digest->str() : std::string();  // named: GCC 12 and temporaries in co_await
    auto body = co_await read_manifest(reg, up, res, req, expected, out.reply, too_large);
    if (!body) {
      out.status = too_large ? meta::fetched::result::refused : meta::fetched::result::unavailable;
      co_return out;
    }
    if (body->converted) {
      out.status = meta::fetched::result::uncacheable;
      out.reply = manifest_reply(res, req, std::move(*body));
      co_return out;
    }
    e.digest = body->digest;
    e.size = body->bytes.size();
    e.media_type = core::media_type::of_manifest(bare_media_type(res.headers), body->bytes);
    const meta::manifest m{e.media_type, std::move(body->bytes)};
    co_await meta_->put_manifest(e.digest, m);
  }
  out.status = meta::fetched::result::ok;
  // The upstream just let this repository have this digest: a GET by digest that
  // follows (containerd's next request) needs no question of its own.
  if (!req.digest) {
    const auto by_digest = meta::key::digest(reg.id(), req.name, e.digest);
    co_await meta_->confirm(by_digest, e);
  }
  co_return out;
}

asio::awaitable<core::reply> mirror::upstream_manifest(upstream::registry& reg, const pull_request& req) {
  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  // Forward what the client accepts; a client that says nothing gets the
  // registry's default answer, as it would without Berth.
  up.accept = req.accept;
  up.method = req.head ? "HEAD" : "GET";

  error_code ec;
  auto res = co_await client_.fetch(reg, up, ec);
  if (ec) co_return transport_error(ec, reg.id());

  // Some registries refuse HEAD on manifests (405); containerd then GETs, so do we.
  // A HEAD that lacks the digest or length is completed the same way.
  if (req.head && (res.status == 405 || (res.status == 200 && (!res.headers.get("Docker-Content-Digest") ||
                                                               !content_length(res.headers))))) {
    up.method = "GET";
    res = co_await client_.fetch(reg, up, ec);
    if (ec) co_return transport_error(ec, reg.id());
  }
  if (res.status != 200) co_return co_await upstream_error_reply(res, req, options_.max_manifest_bytes);

  if (req.head && !res.body) {
    core::reply r;
    r.upstream_status = res.status;
    copy_headers(res.headers, r.headers);
    r.headers.erase("Content-Range");
    r.headers.erase("Accept-Ranges");
    r.head_length = content_length(res.headers);
    if (req.digest && res.headers.get("Docker-Content-Digest") != std::optional<std::string_view>(req.digest->str())) {
      r.headers.set("Docker-Content-Digest", req.digest->str());
    }
    co_return r;
  }

  core::reply fail;
  bool too_large = false;
  const std::string expected =
      req.digest ? req.digest->str() : std::string();  // named: GCC 12 and temporaries in co_await
  auto body = co_await read_manifest(reg, up, res, req, expected, fail, too_large);
  if (!body) co_return fail;
  co_return manifest_reply(res, req, std::move(*body));
}

core::reply mirror::manifest_reply(const upstream::response& res, const pull_request& req, manifest_body body) {
  core::reply r;
  r.upstream_status = res.status;
  copy_headers(res.headers, r.headers);
  r.headers.erase("Content-Range");
  r.headers.erase("Accept-Ranges");
  r.headers.set("Docker-Content-Digest", body.digest);
  if (!r.headers.get("Content-Type")) r.headers.set("Content-Type", std::string(core::media_type::oci_manifest));
  if (req.head) {
    r.head_length = body.bytes.size();
  } else {
    r.body = std::move(body.bytes);
  }
  return r;
}

asio::awaitable<core::reply> mirror::blob(upstream::registry& reg, const pull_request& req) {
  if (store_ != nullptr && req.digest) {
    bool handled = false;
    auto r = co_await cached_blob(reg, req, handled);
    if (handled) co_return r;
  }
  co_return co_await upstream_blob(reg, req);
}

asio::awaitable<core::reply> mirror::upstream_blob(upstream::registry& reg, const pull_request& req) {
  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.method = req.head ? "HEAD" : "GET";
  up.range = req.range;

  error_code ec;
  auto res = co_await client_.fetch(reg, up, ec);
  if (ec) co_return transport_error(ec, reg.id());
  // Harbor proxy-cache projects answer HEAD on a blob they have not cached with
  // 404 (PROTOCOL.md §3); only GET is proxied. Ask with GET and keep the headers.
  if (req.head && res.status == 404) {
    up.method = "GET";
    res = co_await client_.fetch(reg, up, ec);
    if (ec) co_return transport_error(ec, reg.id());
    if (res.status == 200) {
      core::reply r;
      r.upstream_status = res.status;
      copy_headers(res.headers, r.headers);
      r.head_length = content_length(res.headers);
      r.headers.set("Docker-Content-Digest", req.reference);
      co_return r;  // dropping res.body closes that connection: no blob is downloaded
    }
  }
  if (res.status != 200 && res.status != 206)
    co_return co_await upstream_error_reply(res, req, options_.max_error_body_bytes);

  core::reply r;
  r.status = res.status;
  r.upstream_status = res.status;
  copy_headers(res.headers, r.headers);
  r.headers.set("Docker-Content-Digest", req.reference);
  if (!r.headers.get("Content-Type")) r.headers.set("Content-Type", "application/octet-stream");
  const auto length = content_length(res.headers);
  if (req.head) {
    r.head_length = length;
    co_return r;
  }
  if (!res.body) {
    // An empty blob.
    if (res.status == 200 && req.digest && core::digest_of("", req.digest->algorithm) != req.digest->str()) {
      co_return core::error_reply({502, "DIGEST_INVALID", "upstream sent an empty body for " + req.reference});
    }
    co_return r;
  }
  auto body = std::make_unique<core::min_rate_body>(std::move(res.body), options_.min_rate, options_.min_rate_period);
  if (res.status == 200 && req.digest) {
    // With or without a Content-Length (chunked and close-delimited bodies too): the
    // client gets the last byte only once the whole blob hashed right.
    r.stream = std::make_unique<core::verifying_body>(std::move(body), req.digest->str(), length,
                                                      report_mismatch(metrics_, reg.id(), req.reference, "blob"));
  } else {
    r.stream = std::move(body);  // a range: its bytes alone cannot be checked
  }
  co_return r;
}

asio::awaitable<core::reply> mirror::listing(upstream::registry& reg, const pull_request& req) {
  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.accept = req.kind == endpoint::referrers ? std::string(core::media_type::oci_index) : "application/json";

  error_code ec;
  auto res = co_await client_.fetch(reg, up, ec);
  if (ec) co_return transport_error(ec, reg.id());
  if (res.status != 200) co_return co_await upstream_error_reply(res, req, options_.max_error_body_bytes);

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

namespace {

// Status, headers and body span for a blob of `size` bytes and the client's Range.
// Returns false when the range cannot be satisfied (the reply is then a 416).
// The headers of every blob answer from the cache. Alone: a whole blob of a size
// not known yet (200, no Content-Length, so chunked).
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

store::upstream_answer answer_of(core::reply& r) {
  store::upstream_answer a;
  a.status = r.status;
  a.headers = r.headers;
  a.body = r.body;
  a.error = r.error;
  return a;
}

}  // namespace

asio::awaitable<core::reply> mirror::cached_blob(upstream::registry& reg, const pull_request& req, bool& handled) {
  handled = true;
  const std::string& digest = req.reference;
  core::reply r;
  r.upstream_status = 0;
  if (req.head) {
    // A hit is answered from the index, with no upstream traffic once the upstream
    // has said this repository may have the blob.
    if (auto e = store_->stat(digest)) {
      if (!co_await authorized(reg, req, e->sources, r)) co_return r;
      metrics_.cache_lookup("hit");
      std::uint64_t first = 0, end = 0;
      shape_blob_reply(r, req, e->size, e->media_type, first, end);
      co_return r;
    }
    handled = false;  // a miss: ask the upstream (HEAD), cache nothing
    co_return r;
  }
  boost::system::error_code open_ec;
  auto hit = store_->lookup(digest, open_ec);
  if (open_ec) {
    // The blob is there but cannot be opened now (out of descriptors, an I/O error).
    // Not a miss: a fill would fail the same way. Ask the client to come back.
    r = core::error_reply(
        {503, "UNAVAILABLE", "the blob cache cannot open " + digest + " now (" + open_ec.message() + "); retry"});
    r.headers.add("Retry-After", "1");
    co_return r;
  }
  if (hit) {
    if (!co_await authorized(reg, req, hit->entry().sources, r)) co_return r;
    metrics_.cache_lookup("hit");
    std::uint64_t first = 0, end = 0;
    if (shape_blob_reply(r, req, hit->entry().size, hit->entry().media_type, first, end)) {
      r.stream = store::blob_body(std::move(hit), first, end);
    }
    co_return r;
  }
  if (!store_->writable()) {
    metrics_.cache_disk_fallback();
    handled = false;  // the disk is failing: stream from upstream without caching
    co_return r;
  }
  bool created = false;
  auto f = store_->join_or_start(digest, req.digest->algorithm, created);
  metrics_.cache_lookup(created ? "miss" : "coalesced");
  if (created) {
    metrics_.cache_fill("started");
    // The fill belongs to no client: a client that goes away does not stop it. It
    // runs on the peer worker (with that worker's upstream connections).
    // An exception that escapes it fails the fill (its followers are told at once),
    // and is logged and counted.
    core::spawn(fill_peer_->client_.executor(), fill_peer_->run_fill(f, reg, req),
                [f, &m = metrics_](std::string_view what) {
                  log::error("task_exception", {{"task", "fill"}, {"digest", f->digest()}, {"error", what}});
                  m.task_exception("fill");
                  f->fail(store::fill_failure::upstream_broken);
                });
  }
  // Wait for the upstream's answer: the blob's size, or an error. A ranged request
  // for a blob whose upstream sent no length waits until the fill knows the size.
  const bool ranged = core::parse_byte_range(req.range).has_value();
  auto answered = [ranged](const store::fill::progress& p) {
    return p.failure != store::fill_failure::none || (p.started && (p.sized || !ranged));
  };
  auto p = f->snapshot();
  while (!answered(p)) {
    co_await f->wait_for_change(p.version, options_.fill_stall);
    const auto next = f->snapshot();
    if (next.version == p.version) break;  // no answer within the stall limit
    p = next;
  }
  if (!created && p.started && p.failure == store::fill_failure::none) {
    // Joining a fill started for another repository: the upstream decides first.
    // The fill's own repository was confirmed as it started (named: GCC 12 and
    // temporaries in co_await).
    const std::vector<store::source> fill_source{{f->source(), core::unix_ms()}};
    if (!co_await authorized(reg, req, fill_source, r)) co_return r;
  }
  if (p.failure != store::fill_failure::none || !answered(p)) {
    if (auto a = f->answer()) {
      r.status = a->status;
      r.upstream_status = a->status;
      r.headers = a->headers;
      r.body = a->body;
      r.error = a->error;
      co_return r;
    }
    if (p.failure == store::fill_failure::disk) {
      metrics_.cache_disk_fallback();
      handled = false;  // the cache could not take it: stream it instead
      co_return r;
    }
    co_return core::error_reply({502, "UNAVAILABLE",
                                 "fetching " + digest + " from upstream registry " + reg.id() + " failed (" +
                                     std::string(store::to_string(p.failure)) + ")"});
  }
  r.upstream_status = 200;
  std::uint64_t first = 0, end = 0;
  std::optional<std::uint64_t> body_end;
  if (p.sized) {
    if (!shape_blob_reply(r, req, p.size, p.media_type, first, end)) co_return r;
    body_end = end;
  } else {
    // The upstream sent no length, so neither can we: a whole body, chunked (a
    // ranged request waited above until the fill knew its size).
    shape_unsized_reply(r, req, p.media_type);
  }
  boost::system::error_code ec;
  const int fd = f->open_for_read(ec);
  if (ec) {
    log::error("cache_read_failed", {{"digest", digest}, {"error", ec.message()}});
    handled = false;
    co_return r;
  }
  r.stream = store::fill_body(std::move(f), fd, first, body_end, options_.fill_stall,
                              [this, &reg, req](std::uint64_t offset, std::optional<std::uint64_t> to) {
                                return upstream_range(reg, req, offset, to);
                              });
  co_return r;
}

asio::awaitable<bool> mirror::authorized(upstream::registry& reg, const pull_request& req,
                                         const std::vector<store::source>& sources, core::reply& denial) {
  const std::string source = reg.id() + "/" + req.name;
  const store::source* known = nullptr;
  for (const auto& s : sources) {
    if (s.name == source) known = &s;
  }
  const auto now = core::unix_ms();
  if (known && now - known->confirmed < options_.authorization_ttl.count()) co_return true;
  // Unknown here, or confirmed too long ago: the upstream decides (one HEAD).
  pull_request head = req;
  head.head = true;
  head.range.clear();
  auto answer = co_await upstream_blob(reg, head);
  if (answer.status == 200) {
    store_->confirm_source(req.reference, source);
    metrics_.cache_lookup("authorized");
    co_return true;
  }
  const bool refused = answer.upstream_status == 401 || answer.upstream_status == 403 || answer.upstream_status == 404;
  if (known && !refused) {
    // The upstream could not say (down, timing out): the last confirmation stands,
    // as a remembered tag is served stale. Only a refusal revokes.
    metrics_.cache_lookup("authorized_stale");
    log::warn("authorization_stale", {{"registry", reg.id()},
                                      {"repository", req.name},
                                      {"digest", req.reference},
                                      {"confirmed_s_ago", (now - known->confirmed) / 1000},
                                      {"upstream_status", answer.status}});
    co_return true;
  }
  if (known) store_->drop_source(req.reference, source);
  metrics_.cache_lookup("denied");
  log::info("cache_hit_denied", {{"registry", reg.id()},
                                 {"repository", req.name},
                                 {"digest", req.reference},
                                 {"upstream_status", answer.status}});
  if (!req.head && answer.error) answer.head_length.reset();  // a GET gets the error body
  denial = std::move(answer);
  co_return false;
}

asio::awaitable<std::unique_ptr<core::body_source>> mirror::upstream_range(upstream::registry& reg, pull_request req,
                                                                           std::uint64_t offset,
                                                                           std::optional<std::uint64_t> end) {
  upstream::request up;
  req.head = false;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.range = "bytes=" + std::to_string(offset) + "-" + (end ? std::to_string(*end - 1) : std::string());
  boost::system::error_code ec;
  auto res = co_await client_.fetch(reg, up, ec);
  const auto range = res.headers.get("Content-Range");
  if (ec || res.status != 206 || !range || range->rfind("bytes " + std::to_string(offset) + "-", 0) != 0) {
    co_return nullptr;
  }
  co_return std::move(res.body);
}

namespace {
constexpr int k_max_resumes = 3;
constexpr std::chrono::milliseconds k_resume_backoff[k_max_resumes] = {
    std::chrono::milliseconds(100), std::chrono::milliseconds(500), std::chrono::milliseconds(2000)};
}  // namespace

asio::awaitable<void> mirror::run_fill(std::shared_ptr<store::fill> f, upstream::registry& reg, pull_request req) {
  try {
    req.head = false;
    req.range.clear();
    upstream::request up;
    up.target = upstream_target(req);
    up.repository = req.name;
    boost::system::error_code ec;
    auto res = co_await client_.fetch(reg, up, ec);
    if (ec) {
      auto r = transport_error(ec, reg.id());
      f->fail(store::fill_failure::upstream_answer, answer_of(r));
      co_return;
    }
    if (res.status != 200) {
      auto r = co_await upstream_error_reply(res, req, options_.max_error_body_bytes);
      f->fail(store::fill_failure::upstream_answer, answer_of(r));
      co_return;
    }
    // No Content-Length (a chunked or close-delimited body) is fine: the fill learns
    // the size at the end and verifies the digest all the same.
    const auto length = content_length(res.headers);
    // Only a well-formed bare media type is kept: it is served again to every client.
    auto type = bare_media_type(res.headers);
    if (!core::media_type::valid(type)) type = "application/octet-stream";
    if (!f->start(length, std::move(type), reg.id() + "/" + req.name)) {
      co_return;
    }
    // Stream into the fill. A body that breaks off (or stalls past read_timeout) is
    // continued from where it stopped with Range, a few times with backoff, so the
    // clients following the fill see one uninterrupted body.
    std::unique_ptr<char[]> buf(new char[256 * 1024]);
    int resumes = 0;
    // A trickling upstream is treated like a stalled one: resume from a fresh connection.
    auto slow_guard = [this](std::unique_ptr<core::body_source> b) -> std::unique_ptr<core::body_source> {
      return std::make_unique<core::min_rate_body>(std::move(b), options_.min_rate, options_.min_rate_period);
    };
    std::unique_ptr<core::body_source> body = slow_guard(std::move(res.body));
    while (body) {
      const auto n = co_await body->read(asio::buffer(buf.get(), 256 * 1024), ec);
      if (!ec && n == 0) break;
      if (!ec) {
        if (!f->append(buf.get(), n)) co_return;
        continue;
      }
      const auto have = f->written();
      log::warn("cache_fill_broken", {{"registry", reg.id()},
                                      {"digest", req.reference},
                                      {"received", have},
                                      {"size", length ? std::to_string(*length) : std::string("unknown")},
                                      {"error", ec.message()},
                                      {"resumes", resumes}});
      body.reset();
      while (!body && resumes < k_max_resumes) {
        asio::steady_timer pause(co_await asio::this_coro::executor, k_resume_backoff[resumes++]);
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        up.range = "bytes=" + std::to_string(have) + "-";
        auto again = co_await client_.fetch(reg, up, ec);
        const auto range = again.headers.get("Content-Range");
        const std::string expect = "bytes " + std::to_string(have) + "-";
        if (!ec && again.status == 206 && range && range->rfind(expect, 0) == 0 && again.body) {
          body = slow_guard(std::move(again.body));
          metrics_.cache_resume("ok");
        } else {
          metrics_.cache_resume("failed");
          log::warn("cache_resume_failed", {{"registry", reg.id()},
                                            {"digest", req.reference},
                                            {"status", again.status},
                                            {"error", ec ? ec.message() : "no usable 206"}});
        }
      }
      if (!body) {
        f->fail(store::fill_failure::upstream_broken);
        co_return;
      }
    }
    f->finish();
  } catch (const std::exception& e) {
    log::error("cache_fill_exception", {{"digest", req.reference}, {"error", e.what()}});
    f->fail(store::fill_failure::upstream_broken);
  }
}

}  // namespace berth::mirror
