// A token service's answer.
#include "fuzz.hpp"
#include "upstream/token_cache.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto t = upstream::parse_token_response(fuzz::text(data, size));
  fuzz::require(t.ok() != !t.error.empty(), "a token, or a reason");
  fuzz::require(t.expires_in.count() >= 0 && t.expires_in.count() <= 24 * 3600, "expires_in within [0, 1 day]");
  return 0;
}
