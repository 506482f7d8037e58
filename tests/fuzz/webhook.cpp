// Harbor's webhook body (after the secret check, but Harbor is an outside party).
#include <string>

#include "fuzz.hpp"
#include "metrics/metrics.hpp"
#include "mirror/registry_table.hpp"
#include "mirror/webhook.hpp"
#include "upstream/client.hpp"
#include "upstream/token_cache.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  static metrics::registry metrics;
  static upstream::token_cache tokens;
  static upstream::registry harbor{
      {{"harbor.example.ts.net"}, "https://harbor.example.ts.net", {}, {}, {}, {}}, tokens, metrics};
  static mirror::registry_table table{{&harbor}, "harbor.example.ts.net"};
  std::string error;
  const auto in = fuzz::text(data, size);
  const auto e = mirror::parse_harbor_event(in, table, "", error);
  fuzz::require(e.has_value() || !error.empty(), "an event, or a reason");
  (void)mirror::webhook_authorized(in, "secret");
  return 0;
}
