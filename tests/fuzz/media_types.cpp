// Content-Type and manifest bodies from the upstream; Accept from the client.
#include "core/media_types.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto in = fuzz::text(data, size);
  const auto nl = in.find('\n');
  const auto content_type = in.substr(0, nl);
  const auto body = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  fuzz::require(core::media_type::valid(core::media_type::of_manifest(content_type, body)),
                "a manifest's media type is always valid");
  const auto cls = core::media_type::classify_accept(in);
  fuzz::require(cls <= core::media_type::accepts_all, "an accept class is a subset of the five bits");
  (void)core::media_type::accept_for(cls);
  if (const auto payload = core::media_type::schema1_payload(body))
    fuzz::require(payload->size() <= body.size() + body.size() / 4 * 3 + 3, "a payload is made of the signed bytes");
  return 0;
}
