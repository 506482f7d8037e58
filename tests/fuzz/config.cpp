// The YAML config file: bad input must be a config_error naming file, line and key,
// never another exception or a crash.
#include <string>

#include "config/config.hpp"
#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const config::env_lookup no_env = [](const char*) -> const char* { return nullptr; };
  try {
    const auto s = config::parse(fuzz::text(data, size), "fuzz.yaml", no_env);
    (void)config::render(s);
  } catch (const config::config_error& e) {
    fuzz::require(std::string(e.what()).rfind("fuzz.yaml", 0) == 0, "errors name the file");
  }
  return 0;
}
