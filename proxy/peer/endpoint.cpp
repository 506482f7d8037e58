#include "peer/endpoint.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <charconv>
#include <utility>

#include "core/chunk_hash.hpp"
#include "core/clock.hpp"
#include "core/failure.hpp"
#include "core/log.hpp"
#include "core/range.hpp"
#include "core/reference.hpp"
#include "metrics/metrics.hpp"
#include "mirror/answers.hpp"
#include "peer/signature.hpp"
#include "store/blob_store.hpp"

namespace berth::peer {

namespace asio = boost::asio;

namespace {

constexpr std::string_view k_prefix = "/peer/blobs/";
constexpr std::string_view k_chunks_prefix = "/peer/chunks/";

// One of the node's `max_uploads` places, taken in one atomic step when a request is
// admitted (so two requests cannot both pass the check for the last place) and given
// back when the body that holds it is done, or at once if the request is refused.
class upload_slot {
 public:
  upload_slot() = default;
  upload_slot(std::atomic<std::size_t>& uploads, std::size_t max, metrics::registry& metrics) {
    if (uploads.fetch_add(1) >= max) {
      uploads.fetch_sub(1);
      return;
    }
    uploads_ = &uploads;
    metrics_ = &metrics;
    metrics_->peer_uploads_active(uploads.load());
  }
  upload_slot(upload_slot&& o) noexcept
      : uploads_(std::exchange(o.uploads_, nullptr)), metrics_(std::exchange(o.metrics_, nullptr)) {}
  upload_slot& operator=(upload_slot&&) = delete;
  upload_slot(const upload_slot&) = delete;
  upload_slot& operator=(const upload_slot&) = delete;
  ~upload_slot() {
    if (uploads_ == nullptr) return;
    const auto left = uploads_->fetch_sub(1) - 1;
    metrics_->peer_uploads_active(left);
  }
  explicit operator bool() const { return uploads_ != nullptr; }

 private:
  std::atomic<std::size_t>* uploads_ = nullptr;
  metrics::registry* metrics_ = nullptr;
};

// A body sent to a peer: holds its upload place and counts the bytes sent.
class upload_body final : public core::body_source {
 public:
  upload_body(std::unique_ptr<core::body_source> inner, upload_slot slot, metrics::registry& metrics)
      : inner_(std::move(inner)), slot_(std::move(slot)), metrics_(metrics) {}
  ~upload_body() override {
    if (sent_ > 0) metrics_.peer_upload_bytes(sent_);
  }
  upload_body(const upload_body&) = delete;
  upload_body& operator=(const upload_body&) = delete;
  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, boost::system::error_code& ec) override {
    const auto n = co_await inner_->read(buf, ec);
    sent_ += n;
    co_return n;
  }
  std::optional<std::uint64_t> size() const override { return inner_->size(); }
  std::optional<core::file_span> file() const override { return inner_->file(); }
  void sent(std::uint64_t n) override {
    sent_ += n;
    inner_->sent(n);
  }

 private:
  std::unique_ptr<core::body_source> inner_;
  upload_slot slot_;
  metrics::registry& metrics_;
  std::uint64_t sent_ = 0;
};

http::handled refuse(core::failure f, std::string message, std::string_view outcome, metrics::registry& metrics,
                     std::string_view route = "peer_blob") {
  metrics.peer_upload(outcome);
  http::handled h;
  h.route = std::string(route);
  h.reply = core::error_reply(f, std::move(message));
  if (f == core::failure::overloaded || f == core::failure::cache_unavailable) h.reply.headers.add("Retry-After", "1");
  return h;
}

}  // namespace

endpoint::endpoint(const peer_options& options, metrics::registry& metrics, store::blob_store* store,
                   std::chrono::milliseconds fill_stall)
    : options_(options), metrics_(metrics), store_(store), fill_stall_(fill_stall) {}

http::handler endpoint::handler() {
  return [this](const http::incoming& in) { return serve(in); };
}

asio::awaitable<http::handled> endpoint::serve(const http::incoming& in) {
  std::string_view target = in.target;
  // Exactly /peer/blobs/<digest>, or /peer/chunks/<digest> with an optional
  // ?from=<chunk index>: no other query, no other path, nothing to decode.
  const bool chunks = target.starts_with(k_chunks_prefix);
  std::uint64_t from = 0;
  if (const auto q = target.find('?'); chunks && q != std::string_view::npos) {
    const auto query = target.substr(q + 1);
    const auto digits = query.starts_with("from=") ? query.substr(5) : std::string_view();
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), from);
    target = digits.empty() || digits.size() > 10 || ec != std::errc() || end != digits.data() + digits.size()
                 ? std::string_view()
                 : target.substr(0, q);
  }
  const auto prefix = chunks ? k_chunks_prefix : k_prefix;
  const auto digest = target.starts_with(prefix) ? core::parse_digest(target.substr(prefix.size())) : std::nullopt;
  if (!digest) {
    co_return refuse(core::failure::not_an_endpoint,
                     "the peer endpoint serves only /peer/blobs/<digest> and /peer/chunks/<digest>[?from=<n>]",
                     "not_found", metrics_);
  }
  if (in.method != "GET" && (chunks || in.method != "HEAD")) {
    co_return refuse(core::failure::method_not_allowed, chunks ? "GET only" : "GET and HEAD only", "not_found",
                     metrics_);
  }
  const auto name = digest->str();
  const auto verdict = check(options_.secret, chunks ? k_chunk_list_method : std::string_view(in.method), name,
                             in.authorization, core::unix_ms() / 1000);
  if (verdict != verdict::ok) {
    log::warn("peer_unauthorized", {{"digest", name}, {"why", to_string(verdict)}});
    co_return refuse(core::failure::peer_unauthorized, "a peer request needs the cluster's signature", "unauthorized",
                     metrics_);
  }
  if (chunks) co_return chunk_list(name, from);
  auto* store = store_.load();
  if (store == nullptr) {
    co_return refuse(core::failure::blob_unknown, "this node has no blob cache", "miss", metrics_);
  }
  const bool head = in.method == "HEAD";
  // A HEAD sends no body and takes no place.
  upload_slot slot = head ? upload_slot() : upload_slot(uploads_, options_.max_uploads, metrics_);
  if (!head && !slot) {
    co_return refuse(core::failure::overloaded, "this node is sending as many blobs as it may; ask another holder",
                     "busy", metrics_);
  }
  mirror::pull_request req;
  req.kind = mirror::endpoint::blob;
  req.head = head;
  req.reference = name;
  req.digest = digest;
  req.range = in.range;
  http::handled h;
  h.route = "peer_blob";
  auto& r = h.reply;
  std::uint64_t first = 0, end = 0;
  boost::system::error_code ec;
  std::shared_ptr<store::fill> f;
  // Published, or a fill under way; looked up twice, as a fill that ends between the
  // two lookups is published by then.
  for (int look = 0; look < 2 && !f; ++look) {
    if (head) {
      if (auto e = store->stat(name, &ec)) {
        metrics_.peer_upload("hit");
        mirror::shape_blob_reply(r, req, e->size, e->media_type, first, end);
        co_return h;
      }
    } else if (auto hit = store->lookup(name, ec)) {
      metrics_.peer_upload("hit");
      if (mirror::shape_blob_reply(r, req, hit->entry().size, hit->entry().media_type, first, end)) {
        r.stream =
            std::make_unique<upload_body>(store::blob_body(std::move(hit), first, end), std::move(slot), metrics_);
      }
      co_return h;
    }
    if (ec) {
      co_return refuse(core::failure::cache_unavailable,
                       "the cache cannot read " + name + " now (" + ec.message() + ")", "failed", metrics_);
    }
    f = store->join(name);
  }
  if (!f) co_return refuse(core::failure::blob_unknown, name + " is not on this node", "miss", metrics_);
  const bool ranged = core::parse_byte_range(req.range).has_value();
  const auto p = co_await f->wait_answered(ranged, fill_stall_);
  if (p.failure != store::fill_failure::none || !store::fill::answered(p, ranged)) {
    co_return refuse(core::failure::blob_unknown, "this node's fill of " + name + " did not get under way", "miss",
                     metrics_);
  }
  metrics_.peer_upload("filling");
  std::optional<std::uint64_t> body_end;
  if (p.sized) {
    if (!mirror::shape_blob_reply(r, req, p.size, p.media_type, first, end)) co_return h;
    body_end = end;
  } else {
    mirror::shape_unsized_reply(r, req, p.media_type);
  }
  if (head) co_return h;
  const int fd = f->open_for_read(ec);
  if (ec) {
    co_return refuse(core::failure::cache_unavailable, "the cache cannot read " + name + " now (" + ec.message() + ")",
                     "failed", metrics_);
  }
  r.stream = std::make_unique<upload_body>(store::fill_body(std::move(f), fd, first, body_end, fill_stall_),
                                           std::move(slot), metrics_);
  co_return h;
}

// {"chunk_size": <bytes>, "from": <index>, "chunks": "<hex of each chunk's hash, one
// after another>"}: from chunk `from` on, every chunk of a published blob, or the
// chunks of a fill under way that its readers may have in full (a node following
// this one asks again, from where its list ends, as it reaches each chunk's end).
// Small: 32 characters per 4 MiB. Takes no upload place.
http::handled endpoint::chunk_list(const std::string& name, std::uint64_t from) {
  constexpr std::string_view route = "peer_chunks";
  auto* store = store_.load();
  if (store == nullptr) {
    return refuse(core::failure::blob_unknown, "this node has no blob cache", "miss", metrics_, route);
  }
  std::string hex;
  boost::system::error_code ec;
  // A published blob's list (the one its blob requests are served from), else a fill
  // under way's; looked up twice, as a fill that ends between the two is published by then.
  bool found = false;
  for (int look = 0; look < 2 && !found; ++look) {
    if (auto e = store->stat(name, &ec)) {
      if (e->chunks.empty()) {
        return refuse(core::failure::blob_unknown, "no chunk hashes are kept here for " + name, "miss", metrics_,
                      route);
      }
      if (from < e->chunks.size() / 32) hex = e->chunks.substr(from * 32);
      found = true;
    } else if (ec) {
      return refuse(core::failure::cache_unavailable, "the cache cannot read " + name + " now (" + ec.message() + ")",
                    "failed", metrics_, route);
    } else if (auto f = store->join(name)) {
      const auto list = f->chunk_digests();
      if (from < list.size()) hex = core::to_hex(std::span(list).subspan(from));
      found = true;
    }
  }
  if (!found) return refuse(core::failure::blob_unknown, name + " is not on this node", "miss", metrics_, route);
  metrics_.peer_upload("chunk_list");
  http::handled h;
  h.route = std::string(route);
  h.reply.headers.set("Content-Type", "application/json");
  h.reply.body = boost::json::serialize(boost::json::object{
      {"chunk_size", core::k_chunk_bytes}, {"from", from}, {"chunks", boost::json::string_view(hex)}});
  return h;
}

}  // namespace berth::peer
