#pragma once
// Who wants to know what the blob store did: the cluster's blob directory (a node
// announces what it holds), tests. Called on the thread that did the work (usually
// the store's disk thread), outside the store's lock: an observer must be quick and
// must not call back into the store.
#include <cstdint>
#include <string>
#include <string_view>

namespace berth::store {

class observer {
 public:
  virtual ~observer() = default;
  // A verified blob is in the cache (a fill published it, or start-up adopted it).
  virtual void published(const std::string& digest, std::uint64_t size) = 0;
  // Evicted for room.
  virtual void evicted(const std::string& digest, std::uint64_t size) = 0;
  // Dropped because it cannot be served: damaged, missing, failed verification.
  virtual void invalidated(const std::string& digest, std::string_view why) = 0;
};

}  // namespace berth::store
