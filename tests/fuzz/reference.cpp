// Repository names, tags and digests from request paths.
#include "core/reference.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto in = fuzz::text(data, size);
  if (core::is_valid_name(in)) fuzz::require(!in.empty() && in.size() <= 255 * 8, "a valid name is not empty");
  if (core::is_valid_tag(in)) fuzz::require(!in.empty() && in.size() <= 128, "a valid tag is 1-128 characters");
  core::digest_problem problem{};
  if (auto d = core::parse_digest(in, &problem)) {
    fuzz::require(d->str() == in, "a parsed digest prints as its input");
    fuzz::require(core::parse_digest(d->str()).has_value(), "a printed digest parses");
  }
  return 0;
}
