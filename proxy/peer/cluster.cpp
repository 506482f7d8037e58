#include "peer/cluster.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>

#include "core/chunk_hash.hpp"
#include "core/clock.hpp"
#include "core/json_fields.hpp"
#include "core/log.hpp"
#include "core/media_types.hpp"
#include "metrics/metrics.hpp"
#include "mirror/answers.hpp"
#include "peer/directory.hpp"
#include "peer/signature.hpp"
#include "upstream/client.hpp"

namespace berth::peer {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr std::size_t k_max_distrusted = 4096;
// Rounds of waiting for a busy peer (0.1, 0.2, 0.4, 0.8 s) before the upstream.
constexpr int k_busy_rounds = 4;

// Counts a fill's bytes by where they came from; for a peer, also how its body ended
// when it broke off.
class counted_body final : public core::body_source {
 public:
  counted_body(std::unique_ptr<core::body_source> inner, metrics::registry& metrics, bool peer)
      : inner_(std::move(inner)), metrics_(metrics), peer_(peer) {}
  ~counted_body() override {
    if (bytes_ > 0) metrics_.fill_bytes(peer_ ? "peer" : "upstream", bytes_);
  }
  counted_body(const counted_body&) = delete;
  counted_body& operator=(const counted_body&) = delete;
  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    const auto n = co_await inner_->read(buf, ec);
    bytes_ += n;
    if (ec && peer_) metrics_.peer_fetch(ec == upstream::errc::timeout ? "stalled" : "broken");
    co_return n;
  }
  std::optional<std::uint64_t> size() const override { return inner_->size(); }

 private:
  std::unique_ptr<core::body_source> inner_;
  metrics::registry& metrics_;
  bool peer_;
  std::uint64_t bytes_ = 0;
};

// Up to 32 768 chunks (128 GiB) in one answer: a list longer than that is not one.
constexpr std::size_t k_max_chunk_list = 1 << 20;
// Chunks in a row whose list a node could not be asked for before it is followed unchecked.
constexpr int k_max_list_failures = 3;

// {"chunk_size": <bytes>, "from": <index>, "chunks": "<hex>"} (peer::endpoint): the
// hashes of chunks from..from+n-1. nullopt when it is not one, or was cut with
// another chunk size.
struct chunk_list {
  std::uint64_t from = 0;
  std::vector<core::chunk_digest> hashes;
};
std::optional<chunk_list> parse_chunk_list(std::string_view text) {
  boost::system::error_code ec;
  const auto doc = boost::json::parse(text, ec);
  const auto* o = ec ? nullptr : doc.if_object();
  if (o == nullptr) return std::nullopt;
  std::uint64_t size = 0;
  chunk_list out;
  const auto* hex = o->if_contains("chunks");
  if (!core::get_int(*o, "chunk_size", size) || size != core::k_chunk_bytes || !core::get_int(*o, "from", out.from) ||
      hex == nullptr || !hex->is_string()) {
    return std::nullopt;
  }
  auto hashes = core::chunk_digests_from_hex(hex->get_string());
  if (!hashes) return std::nullopt;
  out.hashes = std::move(*hashes);
  return out;
}

// "ip:port" or "[v6]:port" as an origin (https with peers.tls).
std::optional<upstream::origin> node_origin(const std::string& node, bool tls) {
  return upstream::parse_url((tls ? "https://" : "http://") + node);
}

class cluster_source final : public mirror::blob_source, public std::enable_shared_from_this<cluster_source> {
 public:
  cluster_source(cluster& c, std::shared_ptr<mirror::upstream_blob_source> up)
      : c_(c), up_(std::move(up)), digest_(up_->request().reference) {}

  ~cluster_source() override {
    if (relaying_) c_.dir().unrelay(digest_);
  }
  cluster_source(const cluster_source&) = delete;
  cluster_source& operator=(const cluster_source&) = delete;

  asio::awaitable<mirror::blob_fetch> fetch() override {
    for (int round = 0;; ++round) {
      auto where = co_await c_.dir().lookup(digest_);
      if (!where.answered) {
        co_return co_await from_upstream();  // the backend is down: as a lone node
      }
      auto candidates = usable(where.holders);
      const bool following = candidates.empty();
      if (following) {
        // Nobody holds it yet: whoever claims the fill fetches it for the cluster.
        auto filler = where.filler;
        // A filler whose bytes did not verify, or that failed this fill, is replaced.
        const std::string replacing = c_.distrusted(digest_, filler) || dead(filler) ? filler : std::string();
        if (filler.empty() || filler == c_.dir().self() || !replacing.empty()) {
          filler = co_await claim(replacing);
        }
        if (filler.empty() || filler == c_.dir().self()) {
          co_return co_await from_upstream();
        }
        if (!tried(filler)) candidates.push_back(filler);
      }
      // Nodes following a fill serve it onward: where the filler (or every holder) is
      // busy, the cluster fans out as a tree instead of falling back to the upstream.
      for (auto& node : usable(where.relays)) {
        // Once each (a node that took a claim over may still be listed as a relay).
        if (std::find(candidates.begin(), candidates.end(), node) == candidates.end()) {
          candidates.push_back(std::move(node));
        }
      }
      if (candidates.empty()) {
        co_return co_await from_upstream();
      }
      // A peer has it (or is fetching it): the upstream decides whether this repository
      // may have it before a byte is taken. Anything but yes: the upstream's own GET
      // gives the answer (or the bytes).
      if (!authorized_) {
        if (!co_await up_->grants_access()) co_return co_await from_upstream();
        authorized_ = true;
      }
      for (const auto& node : candidates) {
        mirror::blob_fetch out;
        const bool filling =
            following || std::find(where.relays.begin(), where.relays.end(), node) != where.relays.end();
        if (auto body = co_await ask(node, 0, &out, filling)) {
          out.body = std::move(body);
          co_return out;
        }
      }
      // Everyone asked was busy: they will have room (or more nodes will hold the blob)
      // sooner than the upstream could send it again. A few short waits, then the upstream.
      if (!busy_.empty() && round < k_busy_rounds) {
        co_await pause(std::chrono::milliseconds(100LL << round));
        std::erase_if(failed_,
                      [&](const std::string& n) { return std::find(busy_.begin(), busy_.end(), n) != busy_.end(); });
        busy_.clear();
        continue;
      }
      // The filler failed: take over from it (a busy one keeps its claim). Named:
      // GCC 12 destroys temporaries in a co_await expression twice.
      const std::string failed_filler = dead(where.filler) ? where.filler : std::string();
      auto filler = co_await claim(failed_filler);
      if (!filler.empty() && filler != c_.dir().self() && !tried(filler)) {
        mirror::blob_fetch out;
        if (auto body = co_await ask(filler, 0, &out, true)) {
          out.body = std::move(body);
          co_return out;
        }
      }
      co_return co_await from_upstream();
    }
  }

  asio::awaitable<std::unique_ptr<core::body_source>> fetch_range(std::uint64_t offset,
                                                                  std::optional<std::uint64_t> end,
                                                                  std::string& problem) override {
    if (!current_.empty()) {
      failed_.push_back(current_);  // the peer the body came from broke off or stalled
      log::warn("peer_switch", {{"digest", digest_}, {"from", current_}, {"offset", offset}});
    }
    switch_to({});
    if (authorized_ && !won_) {
      auto where = co_await c_.dir().lookup(digest_);
      if (where.answered) {
        for (const auto& node : usable(where.holders)) {
          if (auto body = co_await ask(node, offset, nullptr, false, end)) co_return body;
        }
        // No holder: follow the filler, or take its place when it is the one that failed.
        const std::string failed_filler = dead(where.filler) ? where.filler : std::string();  // named: see above
        const auto filler = co_await claim(failed_filler);
        if (!filler.empty() && filler != c_.dir().self() && !tried(filler)) {
          if (auto body = co_await ask(filler, offset, nullptr, true, end)) co_return body;
        }
        // Never a relay here: this fill may be one, and two relays following each other
        // would wait on each other. (A fill picks relays only before it is listed as one.)
      }
    }
    auto body = co_await up_->fetch_range(offset, end, problem);
    if (body) body = std::make_unique<counted_body>(std::move(body), c_.metrics(), false);
    co_return body;
  }

  std::string name() const override { return current_.empty() ? up_->name() : "peer " + current_; }

  bool vouches() const override { return !current_.empty() && !unvouched_; }

  asio::awaitable<std::optional<core::chunk_digest>> chunk_hash(std::uint64_t index) override {
    // A published copy's list is whole at once; a growing fill's has every chunk its
    // readers may have, so it is asked again (from where hashes_ ends) as each of its
    // chunks ends here.
    if (index >= hashes_.size() && vouches()) {
      co_await load_hashes(index);
    }
    if (index < hashes_.size()) co_return hashes_[index];
    co_return std::nullopt;
  }

  void wrong_chunk(std::uint64_t index) override {
    if (current_.empty()) return;
    const auto node = current_;
    c_.metrics().peer_fetch("wrong_bytes");
    c_.distrust(digest_, node);
    c_.dir().forget_holder(digest_, node);
    log::error("peer_wrong_bytes", {{"digest", digest_}, {"peer", node}, {"chunk", index}});
    leave_current();  // caught here: not blamed again if the blob fails at its end
  }

  void passed_over(std::uint64_t index) override {
    if (current_.empty()) return;
    log::warn("peer_passed_over", {{"digest", digest_}, {"peer", current_}, {"chunk", index}});
    leave_current();  // its bytes were dropped: not blamed if the blob fails at its end
  }

  void rejected() override {
    for (const auto& node : used_) {
      c_.metrics().peer_fetch("wrong_bytes");
      c_.distrust(digest_, node);
      c_.dir().forget_holder(digest_, node);
      log::error("peer_wrong_bytes", {{"digest", digest_}, {"peer", node}});
    }
  }

 private:
  // Holders worth asking: not this node, not one that failed or lied.
  std::vector<std::string> usable(const std::vector<std::string>& nodes) const {
    std::vector<std::string> out;
    for (const auto& n : nodes) {
      if (n != c_.dir().self() && !tried(n) && !c_.distrusted(digest_, n)) out.push_back(n);
    }
    return out;
  }
  bool tried(const std::string& node) const {
    return !node.empty() && std::find(failed_.begin(), failed_.end(), node) != failed_.end();
  }
  // Failed in this fill, not merely busy.
  bool dead(const std::string& node) const {
    return tried(node) && std::find(busy_.begin(), busy_.end(), node) == busy_.end();
  }

  static asio::awaitable<void> pause(std::chrono::milliseconds d) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(d);
    error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }

  // Claims the fill (replacing `dead`, if it still holds it); when this node wins,
  // keeps the claim fresh while the source lives.
  asio::awaitable<std::string> claim(const std::string& dead) {
    auto who = co_await c_.dir().claim(digest_, dead, c_.claim_hold());
    if (!who.empty() && who == c_.dir().self() && !won_) {
      won_ = true;
      if (!dead.empty()) log::info("peer_fill_taken_over", {{"digest", digest_}, {"from", dead}});
      co_await keep_listed();
    }
    co_return who;
  }

  // This fill follows a peer's: listed as a relay, so others may follow it in turn.
  asio::awaitable<void> relaying() {
    if (relaying_) co_return;
    relaying_ = true;
    c_.dir().relay(digest_, c_.claim_hold());
    co_await keep_listed();
  }

  // Keeps the claim and the relay listing fresh while the source lives.
  asio::awaitable<void> keep_listed() {
    if (listed_) co_return;
    listed_ = true;
    // Named: GCC 12 destroys temporaries in a co_await expression twice.
    const auto executor = co_await asio::this_coro::executor;
    std::weak_ptr<cluster_source> self = weak_from_this();
    auto task = keep_fresh(std::move(self), c_.claim_hold());
    asio::co_spawn(executor, std::move(task), asio::detached);
  }

  static asio::awaitable<void> keep_fresh(std::weak_ptr<cluster_source> weak, std::chrono::milliseconds hold) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (true) {
      timer.expires_after(hold / 3);
      error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      const auto self = weak.lock();
      if (!self) co_return;  // the fill is over: the claim lapses on its own
      if (self->relaying_) self->c_.dir().relay(self->digest_, hold);
      if (self->won_) {
        co_await self->c_.dir().refresh(self->digest_, hold);
      }
    }
  }

  asio::awaitable<mirror::blob_fetch> from_upstream() {
    switch_to({});
    auto out = co_await up_->fetch();
    if (out.body) out.body = std::make_unique<counted_body>(std::move(out.body), c_.metrics(), false);
    co_return out;
  }

  // The blob from `node`, from `offset` (to `end`); null when it will not or cannot
  // send it. A whole-blob answer (offset 0, no end) fills `head` with its size and type.
  // `filling`: the node is the filler, whose bytes come as its upstream sends them.
  asio::awaitable<std::unique_ptr<core::body_source>> ask(const std::string& node, std::uint64_t offset,
                                                          mirror::blob_fetch* head, bool filling,
                                                          std::optional<std::uint64_t> end = std::nullopt) {
    const auto to = node_origin(node, c_.options().tls.enabled());
    if (!to) {
      failed_.push_back(node);
      co_return nullptr;
    }
    upstream::request req;
    req.target = "/peer/blobs/" + digest_;
    if (offset > 0 || end) req.range = "bytes=" + std::to_string(offset) + "-" + (end ? std::to_string(*end - 1) : "");
    error_code ec;
    // Named: GCC 12 destroys temporaries in a co_await expression twice.
    std::string authorization = sign(c_.options().secret, "GET", digest_, core::unix_ms() / 1000);
    std::string label = "peer";
    const auto timeout = filling ? c_.follow_timeout() : c_.options().stall_timeout;
    auto res = co_await up_->via().fetch_direct(*to, req, std::move(authorization), timeout, std::move(label), ec);
    const char* outcome = nullptr;
    if (ec) {
      outcome = "unreachable";
    } else if (res.status == 503) {
      outcome = "busy";
      busy_.push_back(node);
    } else if (res.status != (req.range.empty() ? 200 : 206)) {
      outcome = "refused";
      if (res.status == 404) c_.dir().forget_holder(digest_, node);
    } else if (!req.range.empty()) {
      // Only a 206 that starts exactly where asked continues the body.
      const auto range = res.headers.get("Content-Range");
      if (!range || range->rfind("bytes " + std::to_string(offset) + "-", 0) != 0) outcome = "refused";
    }
    if (outcome == nullptr && !res.body) outcome = "refused";  // an empty blob: not worth a peer, the upstream sends it
    if (outcome != nullptr) {
      c_.metrics().peer_fetch(outcome);
      log::info("peer_fetch_failed", {{"digest", digest_},
                                      {"peer", node},
                                      {"outcome", outcome},
                                      {"status", res.status},
                                      {"error", ec ? ec.message() : std::string()}});
      failed_.push_back(node);
      co_return nullptr;
    }
    c_.metrics().peer_fetch("ok");
    switch_to(node, filling);
    if (head != nullptr) {
      head->size = mirror::content_length(res.headers);
      head->media_type = mirror::bare_media_type(res.headers);
      if (!core::media_type::valid(head->media_type)) head->media_type = "application/octet-stream";
    }
    if (std::find(used_.begin(), used_.end(), node) == used_.end()) used_.push_back(node);
    co_await relaying();
    co_return std::make_unique<counted_body>(std::move(res.body), c_.metrics(), true);
  }

  // The held bytes from `current_` were dropped: not asked again in this fill, and
  // not among the nodes whose bytes the blob is made of.
  void leave_current() {
    failed_.push_back(current_);
    std::erase(used_, current_);
    switch_to({});
  }

  // The body comes from `node` now ("" the upstream): its chunk hashes are asked of it.
  // `filling`: the node is still receiving the blob itself (a filler or a relay).
  void switch_to(std::string node, bool filling = false) {
    current_ = std::move(node);
    current_filling_ = filling;
    hashes_.clear();
    unvouched_ = false;
    list_failures_ = 0;
  }

  // More of the chunk hashes `current_` has for the blob, into hashes_, to cover
  // chunk `index` (whose bytes this fill has in full, so the node has its hash). A
  // node that has no list (an older Berth, a blob it cached before it kept them)
  // vouches for nothing more in this fill. One that cannot be reached or is busy, or
  // whose list stops short, is asked once more at once, then again at its next
  // chunk's end, and after k_max_list_failures such chunks no more.
  asio::awaitable<void> load_hashes(std::uint64_t index) {
    std::string problem;
    for (int attempt = 0; attempt < 2 && !unvouched_; ++attempt) {
      const auto answer = co_await fetch_hashes(problem);
      switch (answer) {
        case list_answer::ok:
          if (index < hashes_.size()) {
            list_failures_ = 0;
            co_return;
          }
          problem = "the list stops at chunk " + std::to_string(hashes_.size());
          break;
        case list_answer::none: unvouched_ = true; break;
        case list_answer::unreachable: break;
      }
    }
    if (!unvouched_ && ++list_failures_ >= k_max_list_failures) unvouched_ = true;
    log::info(
        "peer_chunk_list_unavailable",
        {{"digest", digest_}, {"peer", current_}, {"chunk", index}, {"error", problem}, {"asked_again", !unvouched_}});
  }

  enum class list_answer { ok, none, unreachable };
  asio::awaitable<list_answer> fetch_hashes(std::string& problem) {
    const auto to = node_origin(current_, c_.options().tls.enabled());
    if (!to) co_return list_answer::none;
    upstream::request req;
    req.target = "/peer/chunks/" + digest_ + "?from=" + std::to_string(hashes_.size());
    error_code ec;
    // Named: GCC 12 destroys temporaries in a co_await expression twice.
    std::string authorization = sign(c_.options().secret, k_chunk_list_method, digest_, core::unix_ms() / 1000);
    std::string label = "peer";
    // A node that is filling answers as its own work allows: as patient as its body.
    const auto timeout = current_filling_ ? c_.follow_timeout() : c_.options().stall_timeout;
    auto res = co_await up_->via().fetch_direct(*to, req, std::move(authorization), timeout, std::move(label), ec);
    std::string body;
    if (!ec && res.status == 200) {
      co_await res.read_all(body, k_max_chunk_list, ec);
    }
    if (ec || res.status >= 500) {
      problem = ec ? ec.message() : "HTTP " + std::to_string(res.status);
      co_return list_answer::unreachable;  // a busy moment: asked again
    }
    if (res.status != 200) {
      problem = "HTTP " + std::to_string(res.status);
      co_return list_answer::none;
    }
    auto list = parse_chunk_list(body);
    if (!list || list->from != hashes_.size()) {
      problem = "not a chunk list from chunk " + std::to_string(hashes_.size());
      co_return list_answer::none;
    }
    hashes_.insert(hashes_.end(), list->hashes.begin(), list->hashes.end());
    co_return list_answer::ok;
  }

  cluster& c_;
  std::shared_ptr<mirror::upstream_blob_source> up_;
  std::string digest_;
  std::vector<std::string> failed_;         // peers that refused, broke off or stalled in this fill
  std::vector<std::string> used_;           // peers that gave bytes to this fill
  std::string current_;                     // where the body comes from now ("" the upstream)
  bool current_filling_ = false;            // ... a node still receiving the blob itself
  std::vector<core::chunk_digest> hashes_;  // current_'s chunk hashes for the blob, as far as it knows them
  bool unvouched_ = false;                  // current_ gave no chunk list
  int list_failures_ = 0;                   // chunks in a row whose list current_ could not be asked for
  std::vector<std::string> busy_;           // ... of them, the ones that said they were busy
  bool authorized_ = false;                 // the upstream said yes for this repository
  bool won_ = false;                        // this node holds the fill claim
  bool relaying_ = false;                   // listed as a relay for the blob
  bool listed_ = false;                     // keep_fresh runs
};

}  // namespace

cluster::cluster(const peer_options& options, directory& dir, metrics::registry& metrics,
                 std::chrono::milliseconds follow_timeout, std::chrono::milliseconds claim_hold)
    : options_(options),
      dir_(dir),
      metrics_(metrics),
      follow_timeout_(std::max(follow_timeout, options.stall_timeout)),
      claim_hold_(claim_hold) {}

std::shared_ptr<mirror::blob_source> cluster::for_fill(std::shared_ptr<mirror::upstream_blob_source> upstream) {
  return std::make_shared<cluster_source>(*this, std::move(upstream));
}

void cluster::distrust(const std::string& digest, const std::string& node) {
  std::lock_guard lock(mu_);
  if (distrusted_.size() >= k_max_distrusted) distrusted_.clear();
  distrusted_.emplace(digest, node);
}

bool cluster::distrusted(const std::string& digest, const std::string& node) const {
  std::lock_guard lock(mu_);
  return distrusted_.count({digest, node}) > 0;
}

}  // namespace berth::peer
