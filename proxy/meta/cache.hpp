#pragma once
// The manifest metadata cache: which digest a tag names (per accept class), which
// digests a repository may serve, and manifest bytes by digest. Three tiers:
// memory (this process), a local RocksDB copy (survives restarts and backend
// outages), and the shared backend (Dragonfly/Redis), so that the cluster asks the
// upstream once per answer instead of once per node.
//
// The cache decides *when* to ask the upstream; the mirror decides *how* (it passes
// a fetch function). An answer is trusted for its TTL; after that, one request per
// key at a time in this process, and one per cluster while the backend holds the
// lock, goes upstream. When the upstream is unavailable, a known answer is served
// stale within max_stale; a 404 or a refusal (Harbor's 412) is never papered over.
// Without a backend everything works node-locally. Thread-safe.
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/reply.hpp"
#include "meta/options.hpp"

namespace berth::metrics {
class registry;
}

namespace berth::meta {

// What the upstream said about one tag (for one accept class) or one digest in a repository.
struct entry {
  std::int64_t validated_ms = 0;  // unix time (ms) the upstream last confirmed it; shared across nodes
  bool found = true;              // false: the upstream answered 404 (a negative entry)
  std::string digest;
  std::uint64_t size = 0;
  std::string media_type;
};
std::string encode(const entry& e);
std::optional<entry> decode(std::string_view text);

// Names one answer. `group` is the unit of invalidation (a tag across all accept
// classes, or a digest in a repository); `field` tells the answers in it apart.
struct key {
  std::string group;
  std::string field;
  static key tag(std::string_view registry, std::string_view repository, std::string_view tag, unsigned accept_class);
  static key digest(std::string_view registry, std::string_view repository, std::string_view digest);
  std::string flat() const { return group + '#' + field; }
};

struct manifest {
  std::string media_type;
  std::string bytes;
};

// What the mirror's upstream request produced.
struct fetched {
  // uncacheable: `reply` is the client's answer, but not one to remember (a schema-1
  // conversion); whatever was remembered for the key is dropped.
  enum class result { ok, not_found, refused, unavailable, uncacheable };
  result status = result::unavailable;
  entry answer;       // ok: digest, size, media type (the cache stamps the time)
  core::reply reply;  // otherwise: what the client gets
};

// How a lookup was answered (the metric's outcome label).
enum class outcome { fresh_hit, shared_hit, stale, upstream, coalesced, negative, refused };
std::string_view name(outcome o);

struct lookup {
  outcome how = outcome::upstream;
  std::optional<entry> answer;  // set: answer from this (found, or a remembered 404); else `reply`
  core::reply reply;
};

// Asks the upstream. `known` is the newest answer any tier had, possibly stale.
using fetch_fn = std::function<boost::asio::awaitable<fetched>(const std::optional<entry>& known)>;

class redis_client;
class local_db;

class cache {
 public:
  // `backend` and `local` may be null (embedded mode; memory only).
  cache(metadata_options options, metrics::registry& metrics, std::shared_ptr<redis_client> backend,
        std::unique_ptr<local_db> local);
  ~cache();
  cache(const cache&) = delete;
  cache& operator=(const cache&) = delete;

  const metadata_options& options() const;

  // Listens for other nodes' invalidations (when there is a backend) and drops
  // expired local entries. Call once, before serving.
  void start();
  // Adds the node-local copy to a cache built without one (its directory was a
  // predecessor's until now). Ignored when there is one already. Thread-safe.
  void attach_local(std::unique_ptr<local_db> local);

  // The answer for `k`. `registry` and `kind` ("tag", "digest") label the metrics.
  boost::asio::awaitable<lookup> resolve(const key& k, std::chrono::milliseconds ttl, std::string_view registry,
                                         std::string_view kind, const fetch_fn& fetch);

  // Records, in every tier, that the upstream confirmed `e` for `k` just now.
  boost::asio::awaitable<void> confirm(const key& k, const entry& e);

  // Manifest bytes by digest from the first tier holding a copy whose bytes match
  // the digest; copies that do not match are dropped and counted.
  boost::asio::awaitable<std::optional<manifest>> get_manifest(const std::string& digest);
  // REQUIRES: digest_of(m.bytes) == digest (the caller verified it).
  boost::asio::awaitable<void> put_manifest(const std::string& digest, const manifest& m);

  // Drops every answer in these groups, on this node and (through the backend) on
  // every node. Returns false if the backend could not be told.
  boost::asio::awaitable<bool> invalidate(const std::vector<std::string>& groups);

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace berth::meta
