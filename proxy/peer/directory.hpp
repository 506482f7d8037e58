#pragma once
// The cluster's blob directory, in the metadata backend (Dragonfly) every node
// already shares:
//   <prefix>blob:<digest>    the nodes ("ip:port" of their peer endpoints) holding the
//                            blob: a set, expiring holder_ttl after its last announcement
//   <prefix>node:<address>   a node's heartbeat, expiring after three missed beats
//   <prefix>fill:<digest>    the node fetching the blob from the upstream for the whole
//                            cluster: a claim (SET NX PX), refreshed while it fills
//   <prefix>relay:<digest>   nodes whose own fill of the blob is following another node's:
//                            they serve it onward as it grows, when the filler is busy
// The store tells it what it published and evicted (store::observer, on the disk
// thread): those writes are queued and sent in pipelined batches from a thread of
// the directory's own, so no disk or request path waits for the backend. Lookups
// and claims are one or two round trips, each bounded by metadata.timeout; a backend
// that does not answer means "nobody holds it", and the node asks the upstream.
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store/observer.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::meta {
class redis_client;
}

namespace berth::peer {

class directory final : public store::observer {
 public:
  struct options {
    std::string prefix = "berth:";  // metadata.key_prefix
    std::string self;               // this node's peer address, "ip:port"
    std::chrono::milliseconds holder_ttl{24LL * 3600 * 1000};
    std::chrono::milliseconds heartbeat{5000};
    std::size_t max_candidates = 16;  // holders looked at per lookup
    // Every blob held is announced again this often, so one held longer than
    // holder_ttl stays listed.
    std::chrono::milliseconds reannounce{8LL * 3600 * 1000};
  };
  directory(std::shared_ptr<meta::redis_client> backend, options o, metrics::registry& metrics);
  ~directory() override;
  directory(const directory&) = delete;
  directory& operator=(const directory&) = delete;

  // Starts the heartbeat and the write queue (a thread of their own).
  void start();
  // Every digest this node holds; nullopt while that is not known yet (the cache's
  // index is still being read): asked again a moment later.
  using holdings = std::function<std::optional<std::vector<std::string>>()>;
  // Where the re-announcements read what this node holds (the blob store, once it is
  // open); null when there is no cache (before it closes). Everything is announced
  // again when the backend has forgotten this node (its heartbeat key was gone: a
  // restarted or flushed Dragonfly, or this node away longer than three beats) and
  // every options.reannounce. Called on the directory's thread, never after this
  // returns with null.
  void set_holdings(holdings h);
  // Sends what is queued, then stops.
  void stop();
  const std::string& self() const { return options_.self; }

  // store::observer: queued.
  void published(const std::string& digest, std::uint64_t size) override;
  void evicted(const std::string& digest, std::uint64_t size) override;
  void invalidated(const std::string& digest, std::string_view why) override;
  // Another node said it does not have `digest` (it answered 404) or sent wrong
  // bytes for it: no longer listed as a holder.
  void forget_holder(const std::string& digest, const std::string& node);
  // This node's fill of `digest` follows a peer's and may be followed in turn, for
  // `hold` (queued; renewed by calling again); unrelay when the fill is over.
  void relay(const std::string& digest, std::chrono::milliseconds hold);
  void unrelay(const std::string& digest);

  struct where {
    bool answered = false;             // false: the backend is down or slow
    std::vector<std::string> holders;  // live nodes other than this one, in random order
    std::string filler;                // the node holding the fill claim ("" none)
    std::vector<std::string> relays;   // live nodes following a fill, in random order
  };
  boost::asio::awaitable<where> lookup(const std::string& digest);
  // Claims the fill of `digest` for this node unless another node holds the claim
  // (one that is not `replacing`: a filler this node found dead). Returns who holds
  // it now (this node's address when it won), "" when the backend did not answer.
  boost::asio::awaitable<std::string> claim(const std::string& digest, const std::string& replacing,
                                            std::chrono::milliseconds hold);
  // Extends this node's claim (if it still holds it).
  boost::asio::awaitable<void> refresh(const std::string& digest, std::chrono::milliseconds hold);

  // Waits until the writes queued so far are sent (tests).
  void flush();

 private:
  void queue(std::vector<std::vector<std::string>> commands, std::string_view op);
  // What this node holds now; nullopt while not known (no cache attached yet, or its
  // index still being read).
  std::optional<std::vector<std::string>> holdings_now();
  // Lists this node as a holder of `digest` again (a re-announcement), queued.
  void announce_held(const std::string& digest);
  // The heartbeat: true when the backend had forgotten this node, nullopt when it did
  // not answer.
  boost::asio::awaitable<std::optional<bool>> beat();
  void run();
  std::string key(std::string_view kind, std::string_view id) const;

  std::shared_ptr<meta::redis_client> backend_;
  options options_;
  metrics::registry& metrics_;
  struct state;
  std::unique_ptr<state> state_;
  std::thread thread_;
};

}  // namespace berth::peer
