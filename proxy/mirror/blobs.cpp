#include "mirror/blobs.hpp"

#include <tuple>

#include "core/clock.hpp"
#include "core/hasher.hpp"
#include "core/log.hpp"
#include "core/min_rate_body.hpp"
#include "core/range.hpp"
#include "core/spawn.hpp"
#include "core/verifying_body.hpp"
#include "metrics/metrics.hpp"
#include "mirror/answers.hpp"
#include "mirror/blob_source.hpp"
#include "mirror/fill_driver.hpp"
#include "store/blob_store.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

// The cache holds the blob (or cannot tell) but cannot read it now: ask the client
// to come back.
core::reply cache_unavailable(const std::string& digest, const boost::system::error_code& ec) {
  auto r = core::error_reply(core::failure::cache_unavailable,
                             "the blob cache cannot read " + digest + " now (" + ec.message() + "); retry");
  r.headers.add("Retry-After", "1");
  return r;
}

// Where a follower continues when its fill fails for lack of disk.
asio::awaitable<std::unique_ptr<core::body_source>> continue_from(std::shared_ptr<blob_source> source,
                                                                  std::uint64_t offset,
                                                                  std::optional<std::uint64_t> end) {
  std::string problem;
  auto body = co_await source->fetch_range(offset, end, problem);
  if (!body) log::warn("cache_follow_resume_failed", {{"source", source->name()}, {"error", problem}});
  co_return body;
}

}  // namespace

blob_path::blob_path(upstream::fetcher& upstream, metrics::registry& metrics, store::blob_store* store,
                     const mirror_options& options)
    : upstream_(upstream), fill_upstream_(&upstream), metrics_(metrics), store_(store), options_(options) {}

asio::awaitable<core::reply> blob_path::serve(upstream::registry& reg, const pull_request& req) {
  if (store_ != nullptr && req.digest) {
    if (auto r = co_await cached(reg, req)) co_return std::move(*r);
  }
  co_return co_await from_upstream(reg, req);
}

asio::awaitable<core::reply> blob_path::from_upstream(upstream::registry& reg, const pull_request& req) {
  upstream::request up;
  up.target = upstream_target(req);
  up.repository = req.name;
  up.method = req.head ? "HEAD" : "GET";
  up.range = req.range;

  error_code ec;
  auto res = co_await upstream_.fetch(reg, up, ec);
  if (ec) co_return transport_error(ec, reg.id());
  // Harbor proxy-cache projects answer HEAD on a blob they have not cached with
  // 404 (PROTOCOL.md §3); only GET is proxied. Ask with GET and keep the headers.
  if (req.head && res.status == 404) {
    up.method = "GET";
    res = co_await upstream_.fetch(reg, up, ec);
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
  if (res.status != 200 && res.status != 206) {
    co_return co_await upstream_error_reply(res, req, options_.max_error_body_bytes);
  }

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
      co_return core::error_reply(core::failure::upstream_wrong_bytes,
                                  "upstream sent an empty body for " + req.reference);
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

asio::awaitable<std::optional<core::reply>> blob_path::cached(upstream::registry& reg, const pull_request& req) {
  const std::string& digest = req.reference;
  core::reply r;
  r.upstream_status = 0;
  if (req.head) {
    // A hit is answered from the index, with no upstream traffic once the upstream
    // has said this repository may have the blob.
    boost::system::error_code index_ec;
    auto e = store_->stat(digest, &index_ec);
    if (index_ec) co_return cache_unavailable(digest, index_ec);
    if (!e) co_return std::nullopt;  // a miss: ask the upstream (HEAD), cache nothing
    if (!co_await authorized(reg, req, e->sources, r)) co_return r;
    metrics_.cache_lookup("hit");
    std::uint64_t first = 0, end = 0;
    shape_blob_reply(r, req, e->size, e->media_type, first, end);
    co_return r;
  }
  boost::system::error_code open_ec;
  auto hit = store_->lookup(digest, open_ec);
  if (open_ec) {
    // The blob is there but cannot be opened now (out of descriptors, an I/O error,
    // an index read error). Not a miss: a fill would fail the same way.
    co_return cache_unavailable(digest, open_ec);
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
    co_return std::nullopt;  // the disk is failing: stream from upstream without caching
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
    auto upstream = std::make_shared<upstream_blob_source>(*fill_upstream_, reg, req, options_);
    std::shared_ptr<blob_source> source = upstream;
    if (sources_ != nullptr) source = sources_->for_fill(std::move(upstream));
    core::spawn(fill_upstream_->executor(),
                run_fill(f, std::move(source), reg.id() + "/" + req.name, metrics_, options_),
                [f, &m = metrics_](std::string_view what) {
                  log::error("task_exception", {{"task", "fill"}, {"digest", f->digest()}, {"error", what}});
                  m.task_exception("fill");
                  f->fail(store::fill_failure::upstream_broken);
                });
  }
  // Wait for the upstream's answer: the blob's size, or an error. A ranged request
  // for a blob whose upstream sent no length waits until the fill knows the size.
  const bool ranged = core::parse_byte_range(req.range).has_value();
  const auto p = co_await f->wait_answered(ranged, options_.fill_stall);
  if (!created && p.started && p.failure == store::fill_failure::none) {
    // Joining a fill started for another repository: the upstream decides first.
    // The fill's own repository was confirmed as it started (named: GCC 12 and
    // temporaries in co_await).
    const std::vector<store::source> fill_source{{f->source(), core::unix_ms()}};
    if (!co_await authorized(reg, req, fill_source, r)) co_return r;
  }
  if (p.failure != store::fill_failure::none || !store::fill::answered(p, ranged)) {
    if (auto a = f->answer()) co_return core::copy_of(*a);
    if (p.failure == store::fill_failure::disk) {
      metrics_.cache_disk_fallback();
      co_return std::nullopt;  // the cache could not take it: stream it instead
    }
    co_return core::error_reply(core::failure::upstream_unreachable,
                                "fetching " + digest + " from upstream registry " + reg.id() + " failed (" +
                                    std::string(store::to_string(p.failure)) + ")");
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
    co_return std::nullopt;
  }
  auto own = std::make_shared<upstream_blob_source>(upstream_, reg, req, options_);
  r.stream = store::fill_body(
      std::move(f), fd, first, body_end, options_.fill_stall,
      [own](std::uint64_t offset, std::optional<std::uint64_t> to) { return continue_from(own, offset, to); });
  co_return r;
}

asio::awaitable<bool> blob_path::authorized(upstream::registry& reg, const pull_request& req,
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
  auto answer = co_await from_upstream(reg, head);
  if (answer.status == 200) {
    co_await store_->confirm_source(req.reference, source);
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
  if (known) {
    co_await store_->drop_source(req.reference, source);
  }
  metrics_.cache_lookup("denied");
  log::info("cache_hit_denied", {{"registry", reg.id()},
                                 {"repository", req.name},
                                 {"digest", req.reference},
                                 {"upstream_status", answer.status}});
  if (!req.head && answer.error) answer.head_length.reset();  // a GET gets the error body
  denial = std::move(answer);
  co_return false;
}

}  // namespace berth::mirror
