#pragma once
// The two request handlers: the OCI pull API (router + mirror) and the admin
// endpoints (/metrics, /healthz, /readyz, and Harbor's webhook).
#include <atomic>
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

// `ready` is read on every /readyz.
handler make_admin_handler(metrics::registry& metrics, const std::atomic<bool>& ready, webhook_target webhook = {});

}  // namespace berth::http
