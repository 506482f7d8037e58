#pragma once
// The blob path: a hit is served from the node's cache once the upstream has
// confirmed the repository may have the blob; a miss starts (or joins) a fill that
// every client of that digest follows while the bytes arrive; without a cache, or
// when its disk fails, the blob streams from the upstream, verified on the way.
#include <boost/asio/awaitable.hpp>
#include <optional>
#include <vector>

#include "core/reply.hpp"
#include "mirror/options.hpp"
#include "mirror/request.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::upstream {
class fetcher;
class registry;
}  // namespace berth::upstream
namespace berth::store {
class blob_store;
struct source;
}  // namespace berth::store

namespace berth::mirror {

class fill_sources;

class blob_path {
 public:
  // `store` may be null: no blob cache, every blob streams from upstream.
  blob_path(upstream::fetcher& upstream, metrics::registry& metrics, store::blob_store* store,
            const mirror_options& options);

  boost::asio::awaitable<core::reply> serve(upstream::registry& reg, const pull_request& req);

  // Where fills run: another worker's upstream (and executor), so that a fill (TLS,
  // hashing, writing) and the clients reading it use different cores. Defaults to
  // this path's own.
  void set_fill_upstream(upstream::fetcher& upstream) { fill_upstream_ = &upstream; }
  // Adds the cache to a path built without one. REQUIRES: on this path's worker
  // thread; a request under way keeps what it started with.
  void attach_store(store::blob_store* store) { store_ = store; }
  // Where fills get their bytes besides the upstream (other nodes). Null: the
  // upstream alone. Set before serving.
  void set_fill_sources(fill_sources* sources) { sources_ = sources; }

 private:
  // The answer from the cache: a hit, a fill to follow, or an error; nullopt when
  // the blob should stream from the upstream instead (a HEAD miss, a failing disk).
  boost::asio::awaitable<std::optional<core::reply>> cached(upstream::registry& reg, const pull_request& req);
  // The blob straight from the upstream, no cache.
  boost::asio::awaitable<core::reply> from_upstream(upstream::registry& reg, const pull_request& req);
  // May the cache serve this blob to req's repository? Asks the upstream (HEAD, as
  // Berth) unless it said yes for that repository within authorization_ttl. On "no",
  // `denial` is the upstream's answer for the client.
  boost::asio::awaitable<bool> authorized(upstream::registry& reg, const pull_request& req,
                                          const std::vector<store::source>& sources, core::reply& denial);

  upstream::fetcher& upstream_;
  upstream::fetcher* fill_upstream_;
  metrics::registry& metrics_;
  store::blob_store* store_;
  fill_sources* sources_ = nullptr;
  const mirror_options& options_;
};

}  // namespace berth::mirror
