#pragma once
// Options for the upstream side, filled by config/. Defaults are the documented ones.
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "upstream/credentials.hpp"

namespace berth::upstream {

// One upstream registry (a Harbor). Shared, immutable after start-up.
struct registry_options {
  std::vector<std::string> names;         // values of containerd's ?ns= that route here
  std::string endpoint;                   // "https://host[:port]", where Berth fetches from
  credentials_source credentials;         // robot account files (empty: anonymous)
  std::vector<std::string> repositories;  // allowlist patterns ("library/*", "platform/**"); empty = all
  std::string ca_file;                    // extra CA bundle; the system CAs are always trusted too
  // Where the robot credentials may go as a token realm: "host" (any port) or
  // "host:port". Empty: the endpoint's host, any port. The endpoint's own host and
  // port is always allowed.
  std::vector<std::string> realm_hosts;
  // Where upstream redirects may lead ("host" or "host:port"). Empty: any host, but
  // never a loopback, link-local or unspecified address (by name or once resolved),
  // which must be listed to be reached.
  std::vector<std::string> redirect_hosts;
  const std::string& id() const { return names.front(); }
};

// The keep-alive connection pool and timeouts. One pool per worker thread.
struct pool_options {
  std::size_t max_connections_per_host = 64;  // per worker thread
  std::size_t max_idle_per_host = 16;         // per worker thread
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds response_timeout{30000};  // request sent -> response headers
  std::chrono::milliseconds read_timeout{30000};      // longest gap between body bytes
  // A blob body slower than min_rate bytes/s over a whole min_rate_period is given up
  // (a fill then resumes from a fresh connection). 0: no floor.
  std::uint64_t min_rate = 32 * 1024;
  std::chrono::milliseconds min_rate_period{30000};
  std::chrono::milliseconds idle_timeout{50000};       // pooled idle connections are closed after this
  std::chrono::milliseconds pool_wait_timeout{10000};  // waiting for a free connection slot
  std::size_t max_redirects = 5;
};

}  // namespace berth::upstream
