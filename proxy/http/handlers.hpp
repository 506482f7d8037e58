#pragma once
// The two request handlers: the OCI pull API (router + mirror) and the admin
// endpoints (/metrics, /healthz, /readyz, and Harbor's webhook).
#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "http/server.hpp"

namespace berth::mirror {
class mirror;
class registry_table;
}  // namespace berth::mirror
namespace berth::meta {
class cache;
}

namespace berth::http {

// `mirrors[i]` serves requests on worker thread i.
handler make_pull_handler(std::vector<mirror::mirror*> mirrors);

// Where Harbor's webhook lands. Off when `cache` is null or `secret_file` empty.
struct webhook_target {
  meta::cache* cache = nullptr;
  const mirror::registry_table* table = nullptr;
  std::string secret_file;
};

// What the admin endpoints report on, besides metrics.
struct admin_state {
  const std::atomic<bool>* ready = nullptr;  // read on every /readyz
  std::function<bool()> live;                // /healthz; absent: always live
  // Test-only hook (BERTH_DEBUG_HOOKS=1): POST /debug/block?loop=N&ms=M blocks
  // worker N's event loop for M ms, as a wedged Berth would. Absent: 404.
  std::function<bool(std::size_t loop, std::chrono::milliseconds)> block_loop;
};

handler make_admin_handler(metrics::registry& metrics, admin_state state, webhook_target webhook = {});
// What the admin port checks before reading a body: only the webhook takes one, and
// only with its secret.
body_gate make_admin_gate(metrics::registry& metrics, webhook_target webhook);
// The largest webhook body read (Harbor's events are a few KiB).
inline constexpr std::size_t admin_max_body_bytes = 64 * 1024;

}  // namespace berth::http
