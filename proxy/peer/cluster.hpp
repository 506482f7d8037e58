#pragma once
// Cluster-wide single flight for blobs: where a fill on this node gets its bytes.
//  1. The directory names live holders: fetch from one (random order; a busy or
//     refusing one is skipped).
//  2. None: claim the fill for the cluster. The winner fetches from the upstream and
//     refreshes its claim while it fills; every other node follows the winner's
//     growing fill through its peer endpoint.
//  3. A peer that breaks off, stalls (peers.stall_timeout) or refuses mid-way: the
//     fill continues from the byte it reached (Range) from another holder, from a
//     node that took over the dead filler's claim, or from the upstream.
//  4. Bytes from a peer come with its chunk hashes (GET /peer/chunks/<digest>): the fill
//     holds each chunk until it matches, and on a mismatch drops the peer (wrong_chunk)
//     and goes on from the chunk's start as in 3, so the clients never see the bytes.
// Before any byte is taken from a peer, the upstream confirms that the repository may
// have the blob (HEAD, as Berth): a peer never decides who may read what. Every byte
// is verified against the digest by the fill, whatever its source; a peer whose bytes
// do not verify is not asked for that blob again. The backend down: the upstream.
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "mirror/blob_source.hpp"
#include "peer/options.hpp"

namespace berth::metrics {
class registry;
}

namespace berth::peer {

class directory;

class cluster final : public mirror::fill_sources {
 public:
  // `claim_hold`: how long a fill claim lasts without a refresh (a dead filler
  // holds up the others at most this long).
  // `follow_timeout`: the longest gap in a body from a node whose own fill is under
  // way (its upstream may be slow; it cuts the body itself when its fill stalls
  // that long, cache.fill_stall_timeout). A published copy gets peers.stall_timeout.
  cluster(const peer_options& options, directory& dir, metrics::registry& metrics,
          std::chrono::milliseconds follow_timeout, std::chrono::milliseconds claim_hold = std::chrono::seconds(10));

  std::shared_ptr<mirror::blob_source> for_fill(std::shared_ptr<mirror::upstream_blob_source> upstream) override;

  // A peer whose bytes for `digest` did not verify: never asked for it again (by
  // this node, until it restarts).
  void distrust(const std::string& digest, const std::string& node);
  bool distrusted(const std::string& digest, const std::string& node) const;

  const peer_options& options() const { return options_; }
  directory& dir() { return dir_; }
  metrics::registry& metrics() { return metrics_; }
  std::chrono::milliseconds claim_hold() const { return claim_hold_; }
  std::chrono::milliseconds follow_timeout() const { return follow_timeout_; }

 private:
  const peer_options& options_;
  directory& dir_;
  metrics::registry& metrics_;
  std::chrono::milliseconds follow_timeout_;
  std::chrono::milliseconds claim_hold_;
  mutable std::mutex mu_;
  std::set<std::pair<std::string, std::string>> distrusted_;  // (digest, node), bounded by k_max_distrusted
};

}  // namespace berth::peer
