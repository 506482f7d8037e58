#pragma once
// The robot account Berth uses upstream. Read from a kubernetes.io/dockerconfigjson
// file or from username/password files, and re-read when the files change (Kubernetes
// rotates Secrets by swapping a symlink). Thread-safe.
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace berth::upstream {

struct credentials {
  std::string username;
  std::string password;
  friend bool operator==(const credentials&, const credentials&) = default;
};

// "host[:port]" out of "https://host:port/v1/" or "host:port"; lower-cased host.
std::string normalize_registry_host(std::string_view key);

// Picks the `auths` entry for one of `names`, else for `endpoint_host`, else the
// only entry. Entries give username/password or `auth` (base64 "user:password").
// On failure returns nullopt and sets `error` (never containing a secret).
std::optional<credentials> parse_docker_config(std::string_view json, const std::vector<std::string>& names,
                                               std::string_view endpoint_host, std::string& error);

struct credentials_source {
  std::string docker_config_file;  // a .dockerconfigjson file, or
  std::string username_file;       // plain files holding the username
  std::string password_file;       // and the password (trailing newline trimmed)
  std::vector<std::string> names;  // registry names to look up in docker config
  std::string endpoint_host;       // host[:port] of the endpoint
  bool empty() const { return docker_config_file.empty() && username_file.empty() && password_file.empty(); }
};

class credentials_provider {
 public:
  // Called after each (re)load with "ok", "error" or "missing", for metrics.
  using observer = std::function<void(std::string_view result)>;

  explicit credentials_provider(credentials_source source, observer on_load = {});

  // The current credentials (nullopt: anonymous). Re-reads the files if they
  // changed, checking at most once per `recheck`.
  std::optional<credentials> get();

  // Loads now; returns an error message, or empty on success. Used at start-up
  // and by check-config.
  std::string load_now();

  const credentials_source& source() const { return source_; }

 private:
  struct file_state {
    unsigned long long dev = 0, ino = 0, size = 0;
    long long mtime_ns = 0;
    bool exists = false;
    friend bool operator==(const file_state&, const file_state&) = default;
  };
  std::vector<file_state> stat_files() const;
  std::string load_locked();

  credentials_source source_;
  observer on_load_;
  std::chrono::milliseconds recheck_{1000};

  std::mutex mu_;  // guards everything below
  std::optional<credentials> current_;
  std::vector<file_state> seen_;
  std::chrono::steady_clock::time_point last_check_{};
  bool loaded_ = false;
};

}  // namespace berth::upstream
