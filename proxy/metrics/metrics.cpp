#include "metrics/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <initializer_list>

#include "core/clock.hpp"

namespace berth::metrics {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

namespace {
const prometheus::Histogram::BucketBoundaries& latency_buckets() {
  static const prometheus::Histogram::BucketBoundaries b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                         0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
  return b;
}
std::string s(std::string_view v) {
  return std::string(v);
}

// `value` if it is one of `known`, else "other": a label from a closed set.
std::string one_of(std::string_view value, std::initializer_list<std::string_view> known) {
  return std::find(known.begin(), known.end(), value) != known.end() ? std::string(value) : std::string("other");
}
}  // namespace

std::string_view method_label(std::string_view method) {
  for (std::string_view m : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
    if (method == m) return m;
  }
  return "other";
}

std::string status_label(unsigned status) {
  static constexpr unsigned known[] = {0,   200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403,
                                       404, 405, 406, 408, 409, 412, 413, 416, 429, 431, 500, 501, 502, 503, 504};
  for (unsigned k : known) {
    if (status == k) return std::to_string(status);
  }
  if (status >= 100 && status < 600) return std::to_string(status / 100) + "xx";
  return "other";
}

struct registry::impl {
  std::shared_ptr<prometheus::Registry> reg = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& http_requests =
      BuildCounter()
          .Name("berth_http_requests_total")
          .Help("Requests served to clients, by route, method and status")
          .Register(*reg);
  prometheus::Family<prometheus::Histogram>& http_duration =
      BuildHistogram()
          .Name("berth_http_request_duration_seconds")
          .Help("Time from request to the last byte of the response, by route")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& http_bytes = BuildCounter()
                                                            .Name("berth_http_response_bytes_total")
                                                            .Help("Response body bytes sent to clients, by route")
                                                            .Register(*reg);
  prometheus::Gauge& http_in_flight = BuildGauge()
                                          .Name("berth_http_requests_in_flight")
                                          .Help("Client requests being served now")
                                          .Register(*reg)
                                          .Add({});
  prometheus::Family<prometheus::Counter>& task_exceptions =
      BuildCounter()
          .Name("berth_task_exceptions_total")
          .Help("Exceptions that escaped a background coroutine (accept, session, fill); logged as task_exception")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& connections_shed =
      BuildCounter()
          .Name("berth_http_connections_shed_total")
          .Help(
              "Connections turned away at a listener's max_connections, by listener and action "
              "(closed_idle: the longest idle one closed to make room; refused: answered 503)")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& upstream_requests =
      BuildCounter()
          .Name("berth_upstream_requests_total")
          .Help("Requests sent upstream, by registry, kind (registry, token, redirect) and status (0: no answer)")
          .Register(*reg);
  prometheus::Family<prometheus::Histogram>& upstream_duration =
      BuildHistogram()
          .Name("berth_upstream_request_duration_seconds")
          .Help("Time to the upstream response headers, by registry and kind")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& upstream_errors =
      BuildCounter()
          .Name("berth_upstream_errors_total")
          .Help("Upstream transport failures, by registry and reason")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& upstream_bytes = BuildCounter()
                                                                .Name("berth_upstream_bytes_total")
                                                                .Help("Body bytes received from upstreams, by registry")
                                                                .Register(*reg);
  prometheus::Family<prometheus::Counter>& token_fetches =
      BuildCounter()
          .Name("berth_token_fetches_total")
          .Help("Bearer token fetches from a registry's token service, by result")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& digest_mismatches =
      BuildCounter()
          .Name("berth_digest_mismatches_total")
          .Help("Upstream content whose bytes did not match its digest, by kind")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& credentials_loads =
      BuildCounter()
          .Name("berth_credentials_loads_total")
          .Help("Credential file (re)loads, by registry and result")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& cache_lookups = BuildCounter()
                                                               .Name("berth_cache_requests_total")
                                                               .Help("Blob GETs by cache result: hit, miss, coalesced")
                                                               .Register(*reg);
  prometheus::Family<prometheus::Counter>& cache_bytes =
      BuildCounter()
          .Name("berth_cache_served_bytes_total")
          .Help("Blob bytes served, by source: cache (a hit) or upstream (while filling)")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& cache_fills =
      BuildCounter()
          .Name("berth_cache_fills_total")
          .Help("Cache fills by result: started, completed, failed_<reason>")
          .Register(*reg);
  prometheus::Gauge& cache_size =
      BuildGauge().Name("berth_cache_size_bytes").Help("Bytes of published blobs in the cache").Register(*reg).Add({});
  prometheus::Gauge& cache_temp = BuildGauge()
                                      .Name("berth_cache_temp_bytes")
                                      .Help("Bytes of fills under way, counted toward max_size")
                                      .Register(*reg)
                                      .Add({});
  prometheus::Gauge& cache_limit = BuildGauge()
                                       .Name("berth_cache_limit_bytes")
                                       .Help("The cache's size limit (cache.max_size or its share of the disk)")
                                       .Register(*reg)
                                       .Add({});
  prometheus::Gauge& cache_objects =
      BuildGauge().Name("berth_cache_objects").Help("Published blobs in the cache").Register(*reg).Add({});
  prometheus::Counter& evictions = BuildCounter()
                                       .Name("berth_cache_evictions_total")
                                       .Help("Blobs evicted (least recently used first)")
                                       .Register(*reg)
                                       .Add({});
  prometheus::Counter& evicted_bytes =
      BuildCounter().Name("berth_cache_evicted_bytes_total").Help("Bytes evicted").Register(*reg).Add({});
  prometheus::Counter& disk_errors = BuildCounter()
                                         .Name("berth_cache_disk_errors_total")
                                         .Help("Cache writes that failed (disk full, I/O error)")
                                         .Register(*reg)
                                         .Add({});
  prometheus::Counter& index_errors =
      BuildCounter()
          .Name("berth_cache_index_errors_total")
          .Help("Cache index reads that failed (a read error is not a miss: the request gets 503)")
          .Register(*reg)
          .Add({});
  prometheus::Counter& disk_fallbacks = BuildCounter()
                                            .Name("berth_cache_disk_fallbacks_total")
                                            .Help("Blob responses streamed from upstream because the cache disk failed")
                                            .Register(*reg)
                                            .Add({});
  prometheus::Family<prometheus::Counter>& watchdog_exits =
      BuildCounter()
          .Name("berth_watchdog_exits_total")
          .Help("Runs of Berth ended by the watchdog (a stuck worker), as found at start-up, by reason")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& starts =
      BuildCounter()
          .Name("berth_starts_total")
          .Help("Starts of Berth (1 per run), by how the previous run ended: first, clean, crash, handover")
          .Register(*reg);
  prometheus::Gauge& start_time =
      BuildGauge().Name("berth_start_time_seconds").Help("Unix time this run of Berth started").Register(*reg).Add({});
  prometheus::Gauge& unserved = BuildGauge()
                                    .Name("berth_unserved_seconds")
                                    .Help(
                                        "Seconds no Berth served the node before this run listened (from the "
                                        "previous run's last sign of life; 0 after a hand-over)")
                                    .Register(*reg)
                                    .Add({});
  prometheus::Family<prometheus::Counter>& handovers =
      BuildCounter()
          .Name("berth_handovers_total")
          .Help("Hand-overs of the listening sockets: given, taken, abandoned, refused")
          .Register(*reg);
  // These two exist only once set: a Berth configured without a cache or a shared
  // backend exports neither, so "down" (0) always means configured and not working.
  prometheus::Family<prometheus::Gauge>& cache_up =
      BuildGauge()
          .Name("berth_cache_up")
          .Help("1 while the configured blob cache is in use; 0 when Berth serves without it")
          .Register(*reg);
  prometheus::Family<prometheus::Gauge>& meta_up = BuildGauge()
                                                       .Name("berth_metadata_backend_up")
                                                       .Help("1 while the metadata backend (Dragonfly/Redis) answers")
                                                       .Register(*reg);
  prometheus::Family<prometheus::Counter>& meta_commands = BuildCounter()
                                                               .Name("berth_metadata_backend_commands_total")
                                                               .Help("Commands sent to the metadata backend, by result")
                                                               .Register(*reg);
  prometheus::Family<prometheus::Histogram>& meta_latency = BuildHistogram()
                                                                .Name("berth_metadata_backend_command_duration_seconds")
                                                                .Help("Metadata backend command latency")
                                                                .Register(*reg);
  prometheus::Family<prometheus::Counter>& meta_lookups =
      BuildCounter()
          .Name("berth_metadata_lookups_total")
          .Help(
              "Manifest lookups by registry, kind (tag, digest) and outcome (fresh_hit, shared_hit, stale, upstream, "
              "coalesced, negative, refused)")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& meta_revalidations =
      BuildCounter()
          .Name("berth_metadata_revalidations_total")
          .Help("Cached manifest answers re-checked upstream, by registry and result")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& meta_corrupt =
      BuildCounter()
          .Name("berth_metadata_corrupt_total")
          .Help("Cached manifests whose bytes did not match their digest, by tier; dropped, never served")
          .Register(*reg);
  prometheus::Counter& meta_unsigned = BuildCounter()
                                           .Name("berth_metadata_signature_failures_total")
                                           .Help("Backend entries or messages without a valid signature; ignored")
                                           .Register(*reg)
                                           .Add({});
  prometheus::Family<prometheus::Counter>& meta_invalidations =
      BuildCounter()
          .Name("berth_metadata_invalidations_total")
          .Help("Cached tag and digest answers dropped by invalidation, by source (webhook, peer, resync)")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& meta_webhooks =
      BuildCounter().Name("berth_metadata_webhook_requests_total").Help("Webhook requests by result").Register(*reg);
  prometheus::Family<prometheus::Counter>& resumes =
      BuildCounter()
          .Name("berth_cache_resumes_total")
          .Help("Broken upstream blob downloads continued with Range, by result")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& peer_uploads =
      BuildCounter()
          .Name("berth_peer_uploads_total")
          .Help("Requests to this node's peer endpoint from other nodes, by outcome")
          .Register(*reg);
  prometheus::Family<prometheus::Gauge>& peer_uploads_active =
      BuildGauge()
          .Name("berth_peer_uploads_active")
          .Help("Blob bodies this node is sending to other nodes now")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& peer_upload_bytes =
      BuildCounter().Name("berth_peer_upload_bytes_total").Help("Blob bytes sent to other nodes").Register(*reg);
  prometheus::Family<prometheus::Counter>& peer_fetches =
      BuildCounter().Name("berth_peer_fetches_total").Help("Blob fetches from other nodes, by outcome").Register(*reg);
  prometheus::Family<prometheus::Counter>& peer_chunk_checks =
      BuildCounter()
          .Name("berth_peer_chunk_checks_total")
          .Help("Chunks of blobs from other nodes checked against their chunk hashes before release, by result")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& fill_bytes =
      BuildCounter()
          .Name("berth_fill_bytes_total")
          .Help("Blob bytes that came into this node's cache, by source (peer, upstream)")
          .Register(*reg);
  prometheus::Family<prometheus::Counter>& directory_ops =
      BuildCounter()
          .Name("berth_peer_directory_operations_total")
          .Help("Operations on the cluster's blob directory in the metadata backend, by op and result")
          .Register(*reg);
  prometheus::Gauge& ready =
      BuildGauge().Name("berth_ready").Help("1 when Berth is listening and serving").Register(*reg).Add({});
};

namespace {

// The closed label sets, exported at 0 from the start: a panel shows 0 rather than no
// data, and increase() sees the first event (a series that appears at 1 has none).
constexpr std::string_view k_upstream_error_reasons[] = {
    "connect", "connect_timeout", "tls", "pool_exhausted", "response", "response_timeout", "body_broken", "body_stall"};
constexpr std::string_view k_revalidation_results[] = {"unchanged", "changed", "not_found", "refused", "unavailable"};
constexpr std::string_view k_registry_mismatch_kinds[] = {"blob", "manifest", "manifest_header"};
constexpr std::string_view k_cache_mismatch_kinds[] = {"blob", "blob_length", "blob_fallback", "damaged", "verify"};

}  // namespace

registry::registry() : impl_(std::make_unique<impl>()) {
  for (const auto* result : {"given", "taken", "abandoned", "refused"}) impl_->handovers.Add({{"result", result}});
  for (const auto* reason : {"stuck_loop", "other"}) impl_->watchdog_exits.Add({{"reason", reason}});
  for (const auto* tier : {"local", "shared"}) impl_->meta_corrupt.Add({{"tier", tier}});
  for (const auto* source : {"webhook", "peer"}) impl_->meta_invalidations.Add({{"source", source}});
  for (const auto* result : {"ok", "failed"}) impl_->resumes.Add({{"result", result}});
  for (const auto kind : k_cache_mismatch_kinds)
    impl_->digest_mismatches.Add({{"registry", "cache"}, {"kind", s(kind)}});
}

void registry::peers_configured() {
  for (const auto* o : {"hit", "filling", "chunk_list", "miss", "busy", "unauthorized", "not_found", "failed"})
    impl_->peer_uploads.Add({{"outcome", o}});
  impl_->peer_uploads_active.Add({});
  impl_->peer_upload_bytes.Add({});
  for (const auto* o : {"ok", "busy", "refused", "broken", "stalled", "wrong_bytes", "unreachable"})
    impl_->peer_fetches.Add({{"outcome", o}});
  for (const auto* r : {"match", "mismatch", "unchecked"}) impl_->peer_chunk_checks.Add({{"result", r}});
  for (const auto* src : {"peer", "upstream"}) impl_->fill_bytes.Add({{"source", src}});
  for (const auto* op : {"announce", "withdraw", "relay", "lookup", "lock", "heartbeat"}) {
    for (const auto* result : {"ok", "error"}) impl_->directory_ops.Add({{"op", op}, {"result", result}});
  }
}

void registry::peer_upload(std::string_view outcome) {
  impl_->peer_uploads
      .Add({{"outcome",
             one_of(outcome, {"hit", "filling", "chunk_list", "miss", "busy", "unauthorized", "not_found", "failed"})}})
      .Increment();
}

void registry::peer_uploads_active(std::size_t n) {
  impl_->peer_uploads_active.Add({}).Set(static_cast<double>(n));
}

void registry::peer_upload_bytes(std::uint64_t bytes) {
  impl_->peer_upload_bytes.Add({}).Increment(static_cast<double>(bytes));
}

void registry::peer_fetch(std::string_view outcome) {
  impl_->peer_fetches
      .Add({{"outcome", one_of(outcome, {"ok", "busy", "refused", "broken", "stalled", "wrong_bytes", "unreachable"})}})
      .Increment();
}

void registry::peer_chunk_check(std::string_view result) {
  impl_->peer_chunk_checks.Add({{"result", one_of(result, {"match", "mismatch", "unchecked"})}}).Increment();
}

void registry::fill_bytes(std::string_view source, std::uint64_t bytes) {
  impl_->fill_bytes.Add({{"source", one_of(source, {"peer", "upstream"})}}).Increment(static_cast<double>(bytes));
}

void registry::directory_op(std::string_view op, std::string_view result) {
  impl_->directory_ops
      .Add({{"op", one_of(op, {"announce", "withdraw", "relay", "lookup", "lock", "heartbeat"})},
            {"result", one_of(result, {"ok", "error"})}})
      .Increment();
}

void registry::registry_configured(std::string_view id) {
  for (const auto reason : k_upstream_error_reasons)
    impl_->upstream_errors.Add({{"registry", s(id)}, {"reason", s(reason)}});
  for (const auto result : k_revalidation_results)
    impl_->meta_revalidations.Add({{"registry", s(id)}, {"result", s(result)}});
  for (const auto kind : k_registry_mismatch_kinds)
    impl_->digest_mismatches.Add({{"registry", s(id)}, {"kind", s(kind)}});
}
registry::~registry() = default;

void registry::http_request(std::string_view route, std::string_view method, unsigned status,
                            std::chrono::duration<double> duration, std::uint64_t bytes) {
  impl_->http_requests.Add({{"route", s(route)}, {"method", s(method_label(method))}, {"status", status_label(status)}})
      .Increment();
  impl_->http_duration.Add({{"route", s(route)}}, latency_buckets()).Observe(duration.count());
  if (bytes > 0) impl_->http_bytes.Add({{"route", s(route)}}).Increment(static_cast<double>(bytes));
}

void registry::http_in_flight(int delta) {
  impl_->http_in_flight.Increment(delta);
}

void registry::task_exception(std::string_view task) {
  impl_->task_exceptions.Add({{"task", s(task)}}).Increment();
}

void registry::connection_shed(std::string_view listener, std::string_view action) {
  impl_->connections_shed.Add({{"listener", s(listener)}, {"action", s(action)}}).Increment();
}

void registry::upstream_request(std::string_view registry, std::string_view kind, unsigned status,
                                std::chrono::duration<double> duration) {
  impl_->upstream_requests.Add({{"registry", s(registry)}, {"kind", s(kind)}, {"status", status_label(status)}})
      .Increment();
  impl_->upstream_duration.Add({{"registry", s(registry)}, {"kind", s(kind)}}, latency_buckets())
      .Observe(duration.count());
}

void registry::upstream_error(std::string_view registry, std::string_view reason) {
  impl_->upstream_errors.Add({{"registry", s(registry)}, {"reason", s(reason)}}).Increment();
}

void registry::upstream_bytes(std::string_view registry, std::uint64_t bytes) {
  impl_->upstream_bytes.Add({{"registry", s(registry)}}).Increment(static_cast<double>(bytes));
}

void registry::token_fetch(std::string_view registry, std::string_view result) {
  impl_->token_fetches.Add({{"registry", s(registry)}, {"result", s(result)}}).Increment();
}

void registry::watchdog_exit(std::string_view reason) {
  impl_->watchdog_exits.Add({{"reason", reason == "stuck_loop" ? "stuck_loop" : "other"}}).Increment();
}

void registry::started(std::string_view previous, double unserved_seconds) {
  impl_->starts.Add({{"previous", one_of(previous, {"first", "clean", "crash", "handover"})}}).Increment();
  impl_->start_time.Set(static_cast<double>(core::unix_ms()) / 1000.0);
  impl_->unserved.Set(unserved_seconds);
}

void registry::handover(std::string_view result) {
  impl_->handovers.Add({{"result", one_of(result, {"given", "taken", "abandoned", "refused"})}}).Increment();
}

void registry::cache_up(bool up) {
  impl_->cache_up.Add({}).Set(up ? 1 : 0);
}

void registry::digest_mismatch(std::string_view registry, std::string_view kind) {
  impl_->digest_mismatches.Add({{"registry", s(registry)}, {"kind", s(kind)}}).Increment();
}

void registry::credentials_load(std::string_view registry, std::string_view result) {
  impl_->credentials_loads.Add({{"registry", s(registry)}, {"result", s(result)}}).Increment();
}

void registry::set_ready(bool ready) {
  impl_->ready.Set(ready ? 1 : 0);
}

void registry::cache_lookup(std::string_view result) {
  impl_->cache_lookups.Add({{"result", s(result)}}).Increment();
}

void registry::cache_bytes(std::string_view source, std::uint64_t bytes) {
  if (bytes > 0) impl_->cache_bytes.Add({{"source", s(source)}}).Increment(static_cast<double>(bytes));
}

void registry::cache_fill(std::string_view result) {
  impl_->cache_fills.Add({{"result", s(result)}}).Increment();
}

void registry::cache_temp_bytes(std::uint64_t bytes) {
  impl_->cache_temp.Set(static_cast<double>(bytes));
}

void registry::cache_usage(std::uint64_t bytes, std::uint64_t blobs, std::uint64_t limit) {
  impl_->cache_size.Set(static_cast<double>(bytes));
  impl_->cache_objects.Set(static_cast<double>(blobs));
  impl_->cache_limit.Set(static_cast<double>(limit));
}

void registry::cache_eviction(std::uint64_t blobs, std::uint64_t bytes) {
  impl_->evictions.Increment(static_cast<double>(blobs));
  impl_->evicted_bytes.Increment(static_cast<double>(bytes));
}

void registry::cache_disk_error() {
  impl_->disk_errors.Increment();
}
void registry::cache_index_error() {
  impl_->index_errors.Increment();
}

std::string registry::serialize() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(impl_->reg->Collect());
}

void registry::cache_resume(std::string_view result) {
  impl_->resumes.Add({{"result", s(result)}}).Increment();
}

void registry::cache_disk_fallback() {
  impl_->disk_fallbacks.Increment();
}

void registry::meta_backend_up(bool up) {
  impl_->meta_up.Add({}).Set(up ? 1 : 0);
}

void registry::meta_command(std::string_view result, std::chrono::duration<double> duration) {
  impl_->meta_commands.Add({{"result", s(result)}}).Increment();
  impl_->meta_latency.Add({}, latency_buckets()).Observe(duration.count());
}

void registry::meta_lookup(std::string_view registry, std::string_view kind, std::string_view outcome) {
  impl_->meta_lookups.Add({{"registry", s(registry)}, {"kind", s(kind)}, {"outcome", s(outcome)}}).Increment();
}

void registry::meta_revalidation(std::string_view registry, std::string_view result) {
  impl_->meta_revalidations.Add({{"registry", s(registry)}, {"result", s(result)}}).Increment();
}

void registry::meta_signature_failure() {
  impl_->meta_unsigned.Increment();
}

void registry::meta_corrupt(std::string_view tier) {
  impl_->meta_corrupt.Add({{"tier", s(tier)}}).Increment();
}

void registry::meta_invalidation(std::string_view source, std::uint64_t groups) {
  impl_->meta_invalidations.Add({{"source", s(source)}}).Increment(static_cast<double>(groups));
}

void registry::meta_webhook(std::string_view result) {
  impl_->meta_webhooks.Add({{"result", s(result)}}).Increment();
}

}  // namespace berth::metrics
