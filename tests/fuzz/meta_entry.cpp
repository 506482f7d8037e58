// Values read back from Dragonfly/Redis (anyone with write access can plant them),
// and the Redis URL from the config.
#include <string>

#include "fuzz.hpp"
#include "meta/cache.hpp"
#include "meta/redis.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto in = fuzz::text(data, size);
  if (const auto e = meta::decode(in)) {
    const auto again = meta::decode(meta::encode(*e));
    fuzz::require(again && again->digest == e->digest && again->found == e->found, "an entry survives a round trip");
  }
  std::string error;
  if (!meta::parse_redis_url(in, error)) fuzz::require(!error.empty(), "a URL, or a reason");
  return 0;
}
