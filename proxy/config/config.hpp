#pragma once
// Reads and validates the YAML config and the BERTH_* environment into each
// module's options struct. The only module that includes the YAML parser.
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/log.hpp"
#include "http/options.hpp"
#include "meta/options.hpp"
#include "peer/options.hpp"
#include "store/options.hpp"
#include "upstream/options.hpp"

namespace berth::config {

struct settings {
  http::server_options server;
  upstream::pool_options upstream;
  std::vector<upstream::registry_options> registries;
  std::string default_registry;
  std::optional<store::store_options> cache;  // absent: no blob cache
  meta::metadata_options metadata;            // without `redis`: embedded, node-local
  peer::peer_options peers;                   // without `listen`: no blob sharing between nodes
  log::level log_level = log::level::info;
  std::string source;  // the file it came from
};

// "FILE:LINE:COL: KEY: what is wrong" (or "environment VAR: ...").
class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Returns the value of an environment variable or nullptr.
using env_lookup = std::function<const char*(const char*)>;
const char* process_env(const char* name);

settings load_file(const std::string& path, const env_lookup& env = process_env);
settings parse(std::string_view yaml, const std::string& source, const env_lookup& env = process_env);

// The effective config as YAML, with every secret left out (files are named, never read out).
// Every key Berth reads is shown, with its value or default (files only when set).
std::string render(const settings& s);
// Every key Berth reads, as "section.key" ("listen" at the top level), in the order
// they are read; registries' own keys are not listed.
std::vector<std::string> known_keys();

// "30s", "250ms", "5m", "1h", "2h30m", or a plain number of seconds. False if malformed.
bool parse_duration(std::string_view text, std::chrono::milliseconds& out);

// "50GiB", "500MB", "1048576" (bytes), or "80%" (a fraction of the filesystem).
// Sets exactly one of bytes / fraction. False if malformed.
bool parse_size(std::string_view text, std::uint64_t& bytes, double& fraction);

}  // namespace berth::config
