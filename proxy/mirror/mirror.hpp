#pragma once
// The pull-through decisions for one request: which registry, whether the
// repository is admitted, what to ask upstream, what to verify, what the client
// sees. One per worker thread (it uses that thread's upstream client). The blob
// cache slots in here: a hit answers before the upstream is asked.
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/reply.hpp"
#include "mirror/registry_table.hpp"
#include "mirror/request.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::upstream {
class client;
class registry;
struct request;
struct response;
}  // namespace berth::upstream
namespace berth::store {
class blob_store;
class fill;
struct source;
}  // namespace berth::store
namespace berth::meta {
class cache;
struct entry;
struct fetched;
struct manifest;
}  // namespace berth::meta

namespace berth::mirror {

struct mirror_options {
  // containerd rejects manifests over 4*1048*1048 bytes; so do we.
  std::size_t max_manifest_bytes = 4 * 1048 * 1048;
  std::size_t max_error_body_bytes = 64 * 1024;
  std::size_t max_tags_body_bytes = 16 * 1024 * 1024;
  // A client following a fill gives up when the fill makes no progress this long.
  std::chrono::milliseconds fill_stall{60000};
  // Blob bodies from the upstream slower than this (bytes/s over a period) are given up.
  std::uint64_t min_rate = 0;
  std::chrono::milliseconds min_rate_period{30000};
  // How long a repository's confirmation for a cached blob holds (cache.authorization_ttl).
  std::chrono::milliseconds authorization_ttl{300000};
};

class mirror {
 public:
  // `store` may be null: no blob cache, every blob streams from upstream. `meta`
  // may be null: every manifest request goes upstream.
  mirror(const registry_table& table, upstream::client& client, metrics::registry& metrics,
         store::blob_store* store = nullptr, meta::cache* meta = nullptr, mirror_options options = {});

  boost::asio::awaitable<core::reply> serve(const pull_request& req);

  // Where this mirror's fills run: another worker's mirror, so that a fill (TLS,
  // hashing, writing) and the clients reading it use different cores. Defaults to itself.
  void set_fill_peer(mirror* peer) { fill_peer_ = peer; }

 private:
  boost::asio::awaitable<core::reply> manifest(upstream::registry& reg, const pull_request& req);
  // The manifest straight from the upstream, with the client's Accept; nothing cached.
  boost::asio::awaitable<core::reply> upstream_manifest(upstream::registry& reg, const pull_request& req);
  // Asks the upstream about req's tag or digest for the metadata cache: a HEAD when
  // `known`'s bytes are at hand (revalidation), else a GET whose bytes are kept.
  boost::asio::awaitable<meta::fetched> fetch_manifest(upstream::registry& reg, const pull_request& req,
                                                       unsigned accept_class, const std::optional<meta::entry>& known);
  // Reads a 200 manifest response's body and hashes it; when `expected` is set the
  // bytes must match it. On failure `fail` is the client's answer and the result is
  // null; `too_large` tells an oversized manifest from a broken or wrong one, and
  // `mismatch` bytes that disagree with their digest (asked for, or announced by the
  // upstream's Docker-Content-Digest): worth one more try, never an answer.
  struct manifest_body {
    std::string bytes;
    std::string digest;
    bool converted = false;  // a schema-1 conversion: `digest` names the signed payload, not `bytes`
  };
  // A 200 manifest answer as the client gets it.
  static core::reply manifest_reply(const upstream::response& res, const pull_request& req, manifest_body body);
  boost::asio::awaitable<std::optional<manifest_body>> read_manifest_once(
      upstream::registry& reg, upstream::response& res, const pull_request& req, const std::string& expected,
      core::reply& fail, bool& too_large, bool& mismatch);
  // read_manifest_once, and on a mismatch `up` asked once more with GET (`res` is
  // then that second response).
  boost::asio::awaitable<std::optional<manifest_body>> read_manifest(upstream::registry& reg, upstream::request& up,
                                                                     upstream::response& res, const pull_request& req,
                                                                     const std::string& expected, core::reply& fail,
                                                                     bool& too_large);
  // GETs a manifest by digest, verifies and keeps it. On failure, `fail` is the client's answer.
  boost::asio::awaitable<std::optional<meta::manifest>> download_manifest(upstream::registry& reg,
                                                                          const pull_request& req,
                                                                          const std::string& digest,
                                                                          unsigned accept_class, meta::fetched& fail);
  boost::asio::awaitable<core::reply> blob(upstream::registry& reg, const pull_request& req);
  boost::asio::awaitable<core::reply> listing(upstream::registry& reg, const pull_request& req);
  boost::asio::awaitable<core::reply> cached_blob(upstream::registry& reg, const pull_request& req, bool& handled);
  // The blob straight from the upstream, no cache.
  boost::asio::awaitable<core::reply> upstream_blob(upstream::registry& reg, const pull_request& req);
  // May the cache serve this blob to req's repository? Asks the upstream (HEAD, as
  // Berth) unless it already said yes for that repository. On "no", `denial` is the
  // upstream's answer for the client.
  boost::asio::awaitable<bool> authorized(upstream::registry& reg, const pull_request& req,
                                          const std::vector<store::source>& sources, core::reply& denial);
  // Bytes [offset, end) of req's blob straight from the upstream (206), or null; no
  // `end`: to the blob's end.
  boost::asio::awaitable<std::unique_ptr<core::body_source>> upstream_range(upstream::registry& reg, pull_request req,
                                                                            std::uint64_t offset,
                                                                            std::optional<std::uint64_t> end);
  boost::asio::awaitable<void> run_fill(std::shared_ptr<store::fill> f, upstream::registry& reg, pull_request req);

  const registry_table& table_;
  upstream::client& client_;
  metrics::registry& metrics_;
  store::blob_store* store_;
  meta::cache* meta_;
  mirror_options options_;
  mirror* fill_peer_ = this;
};

}  // namespace berth::mirror
