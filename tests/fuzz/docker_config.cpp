// A kubernetes.io/dockerconfigjson Secret (written by whoever manages the Secret).
#include <string>

#include "fuzz.hpp"
#include "upstream/credentials.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  std::string error;
  const auto c = upstream::parse_docker_config(fuzz::text(data, size), {"registry.example.internal"},
                                               "registry.example.internal", error);
  fuzz::require(c.has_value() || !error.empty(), "credentials, or a reason");
  return 0;
}
