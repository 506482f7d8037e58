// A cache index record read back from RocksDB (a damaged or foreign record).
#include "fuzz.hpp"
#include "store/index.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto e = store::decode_entry(fuzz::text(data, size));
  if (!e) return 0;
  const auto again = store::decode_entry(store::encode_entry(*e));
  fuzz::require(again.has_value(), "what decodes re-encodes");
  fuzz::require(again->size == e->size && again->media_type == e->media_type && again->sources == e->sources,
                "an entry survives a round trip");
  return 0;
}
