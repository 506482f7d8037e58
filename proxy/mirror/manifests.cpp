#include "mirror/manifests.hpp"

#include "core/hasher.hpp"
#include "core/log.hpp"
#include "core/media_types.hpp"
#include "meta/cache.hpp"
#include "metrics/metrics.hpp"
#include "mirror/answers.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

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

manifest_path::manifest_path(upstream::fetcher& upstream, metrics::registry& metrics, meta::cache* meta,
                             const mirror_options& options)
    : upstream_(upstream), metrics_(metrics), meta_(meta), options_(options) {}

asio::awaitable<core::reply> manifest_path::serve(upstream::registry& reg, const pull_request& req) {
  namespace mt = core::media_type;
  const auto cls = mt::classify_accept(req.accept);
  // A client naming none of the four manifest types (no Accept at all, or schema 1)
  // is passed through: the registry answers it with a schema-1 conversion or an
  // error, neither of which the cache can vouch for.
  if (meta_ == nullptr || cls == 0) {
    co_return co_await pass_through(reg, req);
  }

  const std::string& registry = reg.id();
  const auto k = req.digest ? meta::key::digest(registry, req.name, req.reference)
                            : meta::key::tag(registry, req.name, req.reference, cls);
  const auto ttl = req.digest ? meta_->options().tag_ttl : meta_->options().ttl_for(req.reference);
  const std::string_view kind = req.digest ? "digest" : "tag";
  const meta::fetch_fn fetch_fn = [this, &reg, &req, cls](const std::optional<meta::entry>& known) {
    return fetch(reg, req, cls, known);
  };
  auto found = co_await meta_->resolve(k, ttl, registry, kind, fetch_fn);
  if (!found.answer) co_return std::move(found.reply);
  const meta::entry& e = *found.answer;
  if (!e.found) {
    co_return core::error_reply(core::failure::manifest_unknown,
                                "manifest unknown to the upstream registry: " + req.name + (req.digest ? "@" : ":") +
                                    req.reference + " (answer remembered for " +
                                    std::to_string(meta_->options().negative_ttl.count() / 1000) + "s)");
  }
  // A digest's bytes are fixed, but whether a client that does not accept their
  // type may have them is the upstream's call (an index is never given to a client
  // that did not ask for one).
  if (!mt::class_accepts(cls, e.media_type) || (req.digest && e.digest != req.reference)) {
    co_return co_await pass_through(reg, req);
  }

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
    m = co_await download(reg, req, e.digest, cls, fail);
    if (!m) co_return std::move(fail.reply);
  }
  r.body = std::move(m->bytes);
  co_return r;
}

asio::awaitable<std::optional<manifest_path::body>> manifest_path::read_once(upstream::registry& reg,
                                                                             upstream::response& res,
                                                                             const pull_request& req,
                                                                             const std::string& expected,
                                                                             failure& fail) {
  fail = failure{};
  std::string bytes;
  error_code ec;
  co_await res.read_all(bytes, options_.max_manifest_bytes, ec);
  if (ec == upstream::errc::body_too_large) {
    fail.too_large = true;
    fail.reply =
        core::error_reply(core::failure::upstream_too_large,
                          "upstream manifest is larger than " + std::to_string(options_.max_manifest_bytes) + " bytes");
    co_return std::nullopt;
  }
  if (ec) {
    fail.reply = transport_error(ec, reg.id());
    co_return std::nullopt;
  }
  const std::string algorithm = expected.empty() ? "sha256" : expected.substr(0, expected.find(':'));
  std::string computed = core::digest_of(bytes, algorithm);
  if (!expected.empty() && computed != expected) {
    metrics_.digest_mismatch(reg.id(), "manifest");
    log::error("digest_mismatch", {{"registry", reg.id()},
                                   {"kind", "manifest"},
                                   {"repository", req.name},
                                   {"expected", expected},
                                   {"got", computed}});
    fail.reply =
        core::error_reply(core::failure::upstream_wrong_bytes, "upstream manifest bytes do not match " + expected);
    fail.mismatch = true;
    co_return std::nullopt;
  }
  // By tag, the upstream's Docker-Content-Digest is the only statement of what the
  // bytes should be; bytes that disagree with it were damaged on the way (or the
  // upstream is broken). Either way they are not an answer: containerd would resolve
  // the tag to one digest and then fail to commit these bytes under it.
  if (auto claimed = res.headers.get("Docker-Content-Digest");
      claimed && *claimed != computed && claimed->substr(0, algorithm.size() + 1) == algorithm + ":") {
    // A schema-1 conversion names the digest of what its signatures cover.
    if (const auto payload = core::media_type::schema1_payload(bytes);
        expected.empty() && payload && core::digest_of(*payload, algorithm) == *claimed) {
      co_return body{std::move(bytes), std::string(*claimed), true};
    }
    metrics_.digest_mismatch(reg.id(), "manifest_header");
    log::error("digest_mismatch", {{"registry", reg.id()},
                                   {"kind", "manifest_header"},
                                   {"repository", req.name},
                                   {"reference", req.reference},
                                   {"expected", std::string(*claimed)},
                                   {"got", computed}});
    fail.mismatch = true;
    fail.reply = core::error_reply(core::failure::upstream_wrong_bytes,
                                   "upstream manifest bytes do not match the digest the upstream announced for them");
    co_return std::nullopt;
  }
  co_return body{std::move(bytes), std::move(computed), false};
}

asio::awaitable<std::optional<manifest_path::body>> manifest_path::read(upstream::registry& reg, upstream::request& up,
                                                                        upstream::response& res,
                                                                        const pull_request& req,
                                                                        const std::string& expected, failure& fail) {
  auto b = co_await read_once(reg, res, req, expected, fail);
  if (b || !fail.mismatch) co_return b;
  // Wrong bytes: ask once more (a torn write upstream, a flaky hop), then give up.
  up.method = "GET";
  error_code ec;
  res = co_await upstream_.fetch(reg, up, ec);
  if (ec) {
    fail = {transport_error(ec, reg.id())};
    co_return std::nullopt;
  }
  if (res.status != 200) {
    fail = {co_await upstream_error_reply(res, req, options_.max_manifest_bytes)};
    co_return std::nullopt;
  }
  co_return co_await read_once(reg, res, req, expected, fail);
}

asio::awaitable<std::optional<meta::manifest>> manifest_path::download(upstream::registry& reg, const pull_request& req,
                                                                       const std::string& digest, unsigned accept_class,
                                                                       meta::fetched& fail) {
  pull_request by_digest = req;
  by_digest.reference = digest;
  by_digest.digest = core::parse_digest(digest);
  by_digest.head = false;
  upstream::request up;
  up.target = upstream_target(by_digest);
  up.repository = req.name;
  up.accept = core::media_type::accept_for(accept_class);
  error_code ec;
  auto res = co_await upstream_.fetch(reg, up, ec);
  if (ec) {
    fail = unavailable(transport_error(ec, reg.id()));
    co_return std::nullopt;
  }
  if (res.status != 200) {
    fail.status = classify_status(res.status);
    fail.reply = co_await upstream_error_reply(res, req, options_.max_manifest_bytes);
    co_return std::nullopt;
  }
  failure why;
  auto b = co_await read(reg, up, res, req, digest, why);
  if (!b) {
    fail.status = why.too_large ? meta::fetched::result::refused : meta::fetched::result::unavailable;
    fail.reply = std::move(why.reply);
    co_return std::nullopt;
  }
  meta::manifest m{core::media_type::of_manifest(bare_media_type(res.headers), b->bytes), std::move(b->bytes)};
  co_await meta_->put_manifest(digest, m);
  co_return m;
}

asio::awaitable<meta::fetched> manifest_path::fetch(upstream::registry& reg, const pull_request& req,
                                                    unsigned accept_class, const std::optional<meta::entry>& known) {
  meta::fetched out;
  std::optional<meta::manifest> held;
  if (known && known->found) {
    held = co_await meta_->get_manifest(known->digest);
  }

  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.accept = core::media_type::accept_for(accept_class);
  up.method = held ? "HEAD" : "GET";
  error_code ec;
  auto res = co_await upstream_.fetch(reg, up, ec);
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
    res = co_await upstream_.fetch(reg, up, ec);
    if (ec) co_return unavailable(transport_error(ec, reg.id()));
  }
  // A refused revalidation HEAD has no body; a GET client gets the upstream's own
  // error (Harbor's PROJECTPOLICYVIOLATION message), so ask once more with GET.
  if (held && res.status != 200 && res.status < 500 && !req.head) {
    held.reset();
    up.method = "GET";
    res = co_await upstream_.fetch(reg, up, ec);
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
      if (!now_held) {
        now_held = co_await download(reg, req, e.digest, accept_class, out);
      }
      if (!now_held) co_return out;
      e.size = now_held->bytes.size();
      e.media_type = now_held->media_type;
    }
  } else {
    const std::string expected =
        req.digest ? req.digest->str() : std::string();  // named: GCC 12 and temporaries in co_await
    failure why;
    auto b = co_await read(reg, up, res, req, expected, why);
    if (!b) {
      out.status = why.too_large ? meta::fetched::result::refused : meta::fetched::result::unavailable;
      out.reply = std::move(why.reply);
      co_return out;
    }
    if (b->converted) {
      out.status = meta::fetched::result::uncacheable;
      out.reply = reply_for(res, req, std::move(*b));
      co_return out;
    }
    e.digest = b->digest;
    e.size = b->bytes.size();
    e.media_type = core::media_type::of_manifest(bare_media_type(res.headers), b->bytes);
    const meta::manifest m{e.media_type, std::move(b->bytes)};
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

asio::awaitable<core::reply> manifest_path::pass_through(upstream::registry& reg, const pull_request& req) {
  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  // Forward what the client accepts; a client that says nothing gets the
  // registry's default answer, as it would without Berth.
  up.accept = req.accept;
  up.method = req.head ? "HEAD" : "GET";

  error_code ec;
  auto res = co_await upstream_.fetch(reg, up, ec);
  if (ec) co_return transport_error(ec, reg.id());

  // Some registries refuse HEAD on manifests (405); containerd then GETs, so do we.
  // A HEAD that lacks the digest or length is completed the same way.
  if (req.head && (res.status == 405 || (res.status == 200 && (!res.headers.get("Docker-Content-Digest") ||
                                                               !content_length(res.headers))))) {
    up.method = "GET";
    res = co_await upstream_.fetch(reg, up, ec);
    if (ec) co_return transport_error(ec, reg.id());
  }
  if (res.status != 200) {
    co_return co_await upstream_error_reply(res, req, options_.max_manifest_bytes);
  }

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

  const std::string expected =
      req.digest ? req.digest->str() : std::string();  // named: GCC 12 and temporaries in co_await
  failure why;
  auto b = co_await read(reg, up, res, req, expected, why);
  if (!b) co_return std::move(why.reply);
  co_return reply_for(res, req, std::move(*b));
}

core::reply manifest_path::reply_for(const upstream::response& res, const pull_request& req, body b) {
  core::reply r;
  r.upstream_status = res.status;
  copy_headers(res.headers, r.headers);
  r.headers.erase("Content-Range");
  r.headers.erase("Accept-Ranges");
  r.headers.set("Docker-Content-Digest", b.digest);
  if (!r.headers.get("Content-Type")) r.headers.set("Content-Type", std::string(core::media_type::oci_manifest));
  if (req.head) {
    r.head_length = b.bytes.size();
  } else {
    r.body = std::move(b.bytes);
  }
  return r;
}

}  // namespace berth::mirror
