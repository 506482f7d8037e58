// The request target and query: the first thing a client's bytes reach.
#include "http/router.hpp"
#include "core/reference.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto target = fuzz::text(data, size);
  for (const char* method : {"GET", "HEAD", "PUT"}) {
    const auto r = http::route(method, target);
    if (!r.ok()) continue;
    const auto& req = r.request();
    if (req.kind != mirror::endpoint::base) fuzz::require(core::is_valid_name(req.name), "routed names are valid");
    if (req.digest) fuzz::require(req.digest->str() == req.reference, "a digest reference is the parsed digest");
  }
  return 0;
}
