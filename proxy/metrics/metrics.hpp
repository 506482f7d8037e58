#pragma once
// Every Prometheus metric Berth exports, declared once. The only module that
// includes prometheus-cpp. Thread-safe: any thread may record.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace berth::metrics {

// Label values come from closed sets: whatever a client or an upstream controls (a
// method, a status) is mapped onto one, so no request can add a series.
// GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; anything else "other".
std::string_view method_label(std::string_view method);
// The status codes HTTP and the registry API use, exactly; any other "1xx" .. "5xx";
// outside 100-599 "other". 0 (no HTTP answer) stays "0".
std::string status_label(unsigned status);

class registry {
 public:
  registry();
  ~registry();
  // Exports the registry-labelled counters at 0 for a configured registry.
  void registry_configured(std::string_view id);
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  // One request served to a client. `route` is the router's name for it
  // (manifest, blob, tags, referrers, base, invalid, ...).
  void http_request(std::string_view route, std::string_view method, unsigned status,
                    std::chrono::duration<double> duration, std::uint64_t bytes);
  void http_in_flight(int delta);
  // An exception escaped a coroutine nobody awaits (`task`: accept, session, fill).
  void task_exception(std::string_view task);
  // A connection turned away at a listener's limit: "closed_idle" or "refused".
  void connection_shed(std::string_view listener, std::string_view action);

  // One request to an upstream (registry, storage redirect target or token realm).
  // `status` 0 means no HTTP answer (connect error, timeout).
  void upstream_request(std::string_view registry, std::string_view kind, unsigned status,
                        std::chrono::duration<double> duration);
  void upstream_error(std::string_view registry, std::string_view reason);
  void upstream_bytes(std::string_view registry, std::uint64_t bytes);
  void token_fetch(std::string_view registry, std::string_view result);
  void digest_mismatch(std::string_view registry, std::string_view kind);
  void credentials_load(std::string_view registry, std::string_view result);
  void set_ready(bool ready);
  // The previous run of Berth ended because its watchdog found a stuck worker
  // (reported once at start-up; reason: stuck_loop).
  void watchdog_exit(std::string_view reason);
  // This run's start: how the previous one ended (first, clean, crash, handover) and
  // how long before this one listened no Berth served the node (0 after a hand-over;
  // unknown, so 0, for the first run).
  void started(std::string_view previous, double unserved_seconds);
  // A hand-over of the listening sockets: given (to a successor), taken (from a
  // predecessor), abandoned (a successor took them and never accepted), refused
  // (asked while draining).
  void handover(std::string_view result);

  // The blob cache.
  void cache_lookup(std::string_view result);                      // hit, miss, coalesced (joined a fill under way)
  void cache_bytes(std::string_view source, std::uint64_t bytes);  // served from "cache" or while filling ("upstream")
  void cache_fill(std::string_view result);                        // started, completed, failed_<reason>
  void cache_usage(std::uint64_t bytes, std::uint64_t blobs, std::uint64_t limit);
  void cache_temp_bytes(std::uint64_t bytes);  // fills under way, counted toward max_size
  void cache_eviction(std::uint64_t blobs, std::uint64_t bytes);
  void cache_disk_error();
  void cache_index_error();
  void cache_disk_fallback();
  // 1 while the blob cache is in use; 0 when Berth started without it (the directory
  // could not be opened, locked or written) and serves every blob from upstream.
  void cache_up(bool up);

  void cache_resume(std::string_view result);  // a broken upstream body continued with Range: ok, failed

  // Blob sharing between nodes. Exports the peer families at 0 when sharing is on.
  void peers_configured();
  // A request to this node's peer endpoint by outcome: hit (a published blob),
  // filling (a fill under way followed), chunk_list (a blob's chunk hashes), miss,
  // busy, unauthorized, not_found (not a peer path), failed (the cache could not read it).
  void peer_upload(std::string_view outcome);
  void peer_uploads_active(std::size_t n);
  void peer_upload_bytes(std::uint64_t bytes);
  // A fetch from another node by outcome: ok, busy, refused, broken, stalled,
  // wrong_bytes, unreachable.
  void peer_fetch(std::string_view outcome);
  // A chunk from another node checked before its release: match, mismatch, unchecked
  // (the node gave no hash for it; the blob's digest still checks it at the end).
  void peer_chunk_check(std::string_view result);
  // Blob bytes that came into this node's cache, by where from: peer, upstream.
  void fill_bytes(std::string_view source, std::uint64_t bytes);
  // The blob directory in the backend: op (announce, withdraw, lookup, lock,
  // heartbeat) and result (ok, error).
  void directory_op(std::string_view op, std::string_view result);

  // The metadata backend (Dragonfly / Redis).
  void meta_backend_up(bool up);
  void meta_command(std::string_view result, std::chrono::duration<double> duration);  // ok, reply_error, error,
                                                                                       // timeout, down
  // The manifest metadata cache. kind: tag or digest. outcome: fresh_hit, shared_hit,
  // stale, upstream, coalesced, negative, refused.
  void meta_lookup(std::string_view registry, std::string_view kind, std::string_view outcome);
  // A cached answer re-checked upstream: unchanged, changed, not_found, refused, unavailable.
  void meta_revalidation(std::string_view registry, std::string_view result);
  // A tier held bytes that did not match their digest (memory, local, shared): dropped, not served.
  void meta_corrupt(std::string_view tier);
  // A backend entry or message whose signature is missing or wrong (metadata.secret_file).
  void meta_signature_failure();
  // Entries dropped by invalidation. source: webhook (this node), peer (another node's webhook), resync.
  void meta_invalidation(std::string_view source, std::uint64_t groups);
  // Webhook requests by result: invalidated, ignored, unauthorized, bad_request, disabled.
  void meta_webhook(std::string_view result);

  // The Prometheus text exposition format.
  std::string serialize() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace berth::metrics
