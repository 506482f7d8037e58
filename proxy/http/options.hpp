#pragma once
// Options for the listeners and client sessions, filled by config/.
#include <chrono>
#include <cstddef>
#include <string>

namespace berth::http {

struct server_options {
  std::string listen = "127.0.0.1:5050";        // the mirror endpoint containerd talks to
  std::string admin_listen = "127.0.0.1:9095";  // /metrics, /healthz, /readyz
  unsigned threads = 0;                         // worker threads; 0 = one per core
  std::size_t max_header_bytes = 16 * 1024;     // request line + headers
  // Open client connections per listener; 0: fitted to the descriptor limit at
  // start-up (see descriptor_budget in main.cpp).
  std::size_t max_connections = 0;
  std::size_t admin_max_connections = 0;
  std::chrono::milliseconds idle_timeout{60000};      // keep-alive wait for the next request
  std::chrono::milliseconds write_timeout{60000};     // longest a client may stall a write
  std::size_t stream_buffer_bytes = 256 * 1024;       // per streamed response
  std::chrono::milliseconds shutdown_timeout{25000};  // SIGTERM: time for in-flight responses
  // A worker whose event loop has not turned for this long makes Berth exit (so
  // containerd falls back and the kubelet restarts it). 0: no watchdog.
  std::chrono::milliseconds watchdog_timeout{10000};
  bool access_log = true;
  // Send file-backed bodies (cache hits) with sendfile(2) instead of read+write.
  bool zero_copy = true;
  // The Unix socket on which a running Berth hands its listeners to the Berth that
  // replaces it (a DaemonSet update). Empty: handover.sock in the cache directory
  // (no hand-over without a cache); "none": off.
  std::string handover_socket;
};

}  // namespace berth::http
