#pragma once
// The pull-through decisions for one request: which registry, whether the
// repository is admitted, what to ask upstream, what to verify, what the client
// sees. One per worker thread (it uses that thread's upstream client). The blob
// cache slots in here: a hit answers before the upstream is asked.
#include <boost/asio/awaitable.hpp>
#include <cstddef>

#include "core/reply.hpp"
#include "mirror/registry_table.hpp"
#include "mirror/request.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::upstream {
class client;
}

namespace berth::mirror {

struct mirror_options {
  // containerd rejects manifests over 4*1048*1048 bytes; so do we.
  std::size_t max_manifest_bytes = 4 * 1048 * 1048;
  std::size_t max_error_body_bytes = 64 * 1024;
  std::size_t max_tags_body_bytes = 16 * 1024 * 1024;
};

class mirror {
 public:
  mirror(const registry_table& table, upstream::client& client, metrics::registry& metrics,
         mirror_options options = {});

  boost::asio::awaitable<core::reply> serve(const pull_request& req);

 private:
  boost::asio::awaitable<core::reply> manifest(upstream::registry& reg, const pull_request& req);
  boost::asio::awaitable<core::reply> blob(upstream::registry& reg, const pull_request& req);
  boost::asio::awaitable<core::reply> listing(upstream::registry& reg, const pull_request& req);

  const registry_table& table_;
  upstream::client& client_;
  metrics::registry& metrics_;
  mirror_options options_;
};

}  // namespace berth::mirror
