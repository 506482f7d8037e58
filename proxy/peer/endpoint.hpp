#pragma once
// The peer endpoint: where other Berth nodes fetch blobs from this one. Serves
// GET and HEAD /peer/blobs/<digest> from the node's cache, a published blob or a
// fill under way (followed as it grows, Range included), and GET
// /peer/chunks/<digest>, the blob's chunk hashes (core/chunk_hash.hpp), to requests signed with
// the cluster secret, and nothing else: no manifests, no listings, no fill started
// on a peer's behalf. Authorization stays with the upstream: the asking node checks
// the repository with Harbor itself before it serves what it got from here.
#include <atomic>
#include <cstddef>

#include "http/server.hpp"
#include "peer/options.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::store {
class blob_store;
}

namespace berth::peer {

class endpoint {
 public:
  // `store` may be null (no cache yet, or none): every blob is then unknown here.
  endpoint(const peer_options& options, metrics::registry& metrics, store::blob_store* store,
           std::chrono::milliseconds fill_stall);
  // The cache, once open (after a hand-over). Thread-safe.
  void attach_store(store::blob_store* store) { store_ = store; }
  http::handler handler();
  std::size_t uploads() const { return uploads_; }

  boost::asio::awaitable<http::handled> serve(const http::incoming& in);

 private:
  http::handled chunk_list(const std::string& name, std::uint64_t from);

  const peer_options& options_;
  metrics::registry& metrics_;
  std::atomic<store::blob_store*> store_;
  std::chrono::milliseconds fill_stall_;
  std::atomic<std::size_t> uploads_{0};
};

}  // namespace berth::peer
