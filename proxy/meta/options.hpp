#pragma once
// Options for the manifest metadata cache, filled by config/ (the `metadata:` section).
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "meta/redis.hpp"

namespace berth::meta {

struct ttl_override {
  std::string pattern;  // a tag glob: '*' any run of characters, '?' one character
  std::chrono::milliseconds ttl{0};
};

struct metadata_options {
  std::optional<redis_options> redis;  // absent: embedded mode, node-local tiers only
  std::string redis_url;               // as configured, password left out (for logs and render)
  std::string password_file;           // read at start-up; overrides a password in the URL
  std::string key_prefix = "berth:";
  // How long a tag -> digest (or a repository's digest) answer is trusted before the
  // upstream is asked again; Harbor's pull policies are re-checked at least this often.
  std::chrono::milliseconds tag_ttl{60000};
  std::vector<ttl_override> tag_ttl_overrides;
  // How long after its last confirmation a tag may still be served when the upstream is down.
  std::chrono::milliseconds max_stale{24LL * 3600 * 1000};
  // How long an upstream 404 is remembered.
  std::chrono::milliseconds negative_ttl{10000};
  // How long shared manifest bytes live in the backend (immutable; re-hashed on read).
  std::chrono::milliseconds manifest_ttl{7LL * 24 * 3600 * 1000};
  // How long a command to the backend may take (metadata.timeout): past it the
  // backend counts as down for that request. Copied into redis->command_timeout.
  std::chrono::milliseconds timeout{500};
  // How long another node's upstream request may hold the cluster-wide lock.
  std::chrono::milliseconds lock_timeout{10000};
  // How long a request waits for another node's answer before asking the upstream
  // itself. A lock whose holder gave up (a paused Dragonfly applied a SET NX that
  // Berth had already abandoned, say) costs a request at most this.
  std::chrono::milliseconds lock_wait{2000};
  // Bytes of manifests kept in memory on this node.
  std::size_t memory_bytes = 64 << 20;
  // A file holding the shared secret Harbor's webhook sends as its Authorization
  // header. Empty: the webhook endpoint is off.
  std::string webhook_secret_file;
  // The cluster secret (read from secret_file at start-up) that signs what Berth
  // writes to the backend; empty: entries are written and read unsigned.
  std::string secret_file;
  std::string secret;

  // The TTL for a tag: the first override whose pattern matches, else tag_ttl.
  std::chrono::milliseconds ttl_for(std::string_view tag) const;
};

// Glob match for tag patterns.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace berth::meta
