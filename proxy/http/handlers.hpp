#pragma once
// The two request handlers: the OCI pull API (router + mirror) and the admin
// endpoints (/metrics, /healthz, /readyz).
#include <atomic>
#include <vector>

#include "http/server.hpp"

namespace berth::mirror {
class mirror;
}

namespace berth::http {

// `mirrors[i]` serves requests on worker thread i.
handler make_pull_handler(std::vector<mirror::mirror*> mirrors);

// `ready` is read on every /readyz.
handler make_admin_handler(metrics::registry& metrics, const std::atomic<bool>& ready);

}  // namespace berth::http
