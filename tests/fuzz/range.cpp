// The client's Range header.
#include "core/range.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  if (auto r = core::parse_byte_range(fuzz::text(data, size))) {
    fuzz::require(!r->last || *r->last >= r->first, "a range never ends before it starts");
    for (std::uint64_t blob : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{1000}, UINT64_MAX}) {
      if (auto span = r->resolve(blob)) {
        fuzz::require(span->first < span->second && span->second <= blob, "a resolved range lies inside the blob");
      }
    }
  }
  return 0;
}
