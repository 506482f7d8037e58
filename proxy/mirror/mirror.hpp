#pragma once
// The pull-through decisions for one request: which registry, whether the
// repository is admitted, and which path answers it (manifests.hpp, blobs.hpp, or
// a listing passed through). One per worker thread, with that thread's upstream.
#include <boost/asio/awaitable.hpp>

#include "core/reply.hpp"
#include "mirror/blobs.hpp"
#include "mirror/manifests.hpp"
#include "mirror/options.hpp"
#include "mirror/registry_table.hpp"
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
}
namespace berth::meta {
class cache;
}

namespace berth::mirror {

class mirror {
 public:
  // `store` may be null: no blob cache, every blob streams from upstream. `meta`
  // may be null: every manifest request goes upstream.
  mirror(const registry_table& table, upstream::fetcher& upstream, metrics::registry& metrics,
         store::blob_store* store = nullptr, meta::cache* meta = nullptr, mirror_options options = {});
  mirror(const mirror&) = delete;
  mirror& operator=(const mirror&) = delete;

  boost::asio::awaitable<core::reply> serve(const pull_request& req);

  // Where this mirror's fills run: another worker's mirror, so that a fill (TLS,
  // hashing, writing) and the clients reading it use different cores. Defaults to itself.
  void set_fill_peer(mirror& peer) { blobs_.set_fill_upstream(peer.upstream_); }
  // Adds the blob cache to a mirror built without one (a predecessor held it).
  // REQUIRES: on this mirror's worker thread.
  void attach_store(store::blob_store* store) { blobs_.attach_store(store); }
  // Fills take their bytes from other nodes first (blob sharing). Set before serving.
  void set_fill_sources(fill_sources* sources) { blobs_.set_fill_sources(sources); }

 private:
  // tags/list and referrers: passed through, the Link header pointed back here.
  boost::asio::awaitable<core::reply> listing(upstream::registry& reg, const pull_request& req);

  const registry_table& table_;
  upstream::fetcher& upstream_;
  mirror_options options_;
  manifest_path manifests_;
  blob_path blobs_;
};

}  // namespace berth::mirror
