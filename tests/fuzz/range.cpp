// The client's Range header.
#include "core/range.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  if (auto r = core::parse_byte_range(fuzz::text(data, size))) {
    fuzz::require(!r->last || *r->last >= r->first, "a range never ends before it starts");
  }
  return 0;
}
