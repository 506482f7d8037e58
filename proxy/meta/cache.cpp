#include "meta/cache.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <charconv>
#include <list>
#include <mutex>
#include <random>
#include <set>
#include <unordered_map>

#include "core/clock.hpp"
#include "core/hasher.hpp"
#include "core/log.hpp"
#include "core/wakeup.hpp"
#include "meta/local_db.hpp"
#include "meta/redis.hpp"
#include "metrics/metrics.hpp"

namespace berth::meta {

namespace asio = boost::asio;

// ---- entries and keys -------------------------------------------------------

// "v1 <validated_ms> <found> <size> <digest> <media_type>": short, readable with
// redis-cli. Digests and media types never contain spaces.
std::string encode(const entry& e) {
  return "v1 " + std::to_string(e.validated_ms) + ' ' + (e.found ? '1' : '0') + ' ' + std::to_string(e.size) + ' ' +
         (e.digest.empty() ? "-" : e.digest) + ' ' + (e.media_type.empty() ? "-" : e.media_type);
}

std::optional<entry> decode(std::string_view v) {
  auto word = [&v]() -> std::string_view {
    const auto sp = v.find(' ');
    auto w = v.substr(0, sp);
    v = sp == std::string_view::npos ? std::string_view() : v.substr(sp + 1);
    return w;
  };
  auto number = [](std::string_view w, auto& out) {
    auto r = std::from_chars(w.data(), w.data() + w.size(), out);
    return !w.empty() && r.ec == std::errc() && r.ptr == w.data() + w.size();
  };
  entry e;
  if (word() != "v1") return std::nullopt;
  if (!number(word(), e.validated_ms)) return std::nullopt;
  const auto found = word();
  if (found != "0" && found != "1") return std::nullopt;
  e.found = found == "1";
  if (!number(word(), e.size)) return std::nullopt;
  const auto digest = word();
  const auto media = word();
  if (digest.empty() || media.empty() || !v.empty()) return std::nullopt;
  if (digest != "-") e.digest = std::string(digest);
  if (media != "-") e.media_type = std::string(media);
  if (e.found && (e.digest.empty() || e.media_type.empty())) return std::nullopt;
  return e;
}

key key::tag(std::string_view registry, std::string_view repository, std::string_view tag, unsigned accept_class) {
  return {"tag:" + std::string(registry) + "/" + std::string(repository) + ":" + std::string(tag),
          std::to_string(accept_class)};
}

key key::digest(std::string_view registry, std::string_view repository, std::string_view digest) {
  return {"ref:" + std::string(registry) + "/" + std::string(repository) + "@" + std::string(digest), "-"};
}

std::string_view name(outcome o) {
  switch (o) {
    case outcome::fresh_hit: return "fresh_hit";
    case outcome::shared_hit: return "shared_hit";
    case outcome::stale: return "stale";
    case outcome::upstream: return "upstream";
    case outcome::coalesced: return "coalesced";
    case outcome::negative: return "negative";
    case outcome::refused: return "refused";
  }
  return "unknown";
}

std::chrono::milliseconds metadata_options::ttl_for(std::string_view tag) const {
  for (const auto& o : tag_ttl_overrides) {
    if (glob_match(o.pattern, tag)) return o.ttl;
  }
  return tag_ttl;
}

bool glob_match(std::string_view pattern, std::string_view text) {
  // Iterative wildcard match with one backtrack point: linear in practice.
  std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

namespace {

std::int64_t now_ms() {
  return core::unix_ms();
}

std::string random_token() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::to_string(rng()) + std::to_string(rng());
}

lookup clone(const lookup& l) {
  return {l.how, l.answer, core::copy_of(l.reply)};
}

// Manifest bytes as stored in the local and shared tiers: media type, newline, bytes.
std::string pack(const manifest& m) {
  return m.media_type + '\n' + m.bytes;
}

std::optional<manifest> unpack(std::string_view v) {
  const auto nl = v.find('\n');
  if (nl == std::string_view::npos || nl == 0) return std::nullopt;
  return manifest{std::string(v.substr(0, nl)), std::string(v.substr(nl + 1))};
}

// True when the bytes hash to `digest` and a mediaType they declare agrees with the
// stored one (a wrong Content-Type makes containerd misparse, PROTOCOL.md §6).
bool genuine(const manifest& m, const std::string& digest) {
  const auto colon = digest.find(':');
  if (colon == std::string::npos) return false;
  if (core::digest_of(m.bytes, digest.substr(0, colon)) != digest) return false;
  boost::system::error_code ec;
  auto doc = boost::json::parse(m.bytes, ec);
  if (ec || !doc.is_object()) return false;
  if (const auto* mt = doc.get_object().if_contains("mediaType"); mt && mt->is_string()) {
    return std::string_view(mt->get_string()) == m.media_type;
  }
  return true;
}

// The process-wide tier: answers by group, and manifest bytes in LRU order.
class memory_tier {
 public:
  explicit memory_tier(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  std::optional<entry> get(const key& k) {
    std::lock_guard lock(mu_);
    auto it = groups_.find(k.group);
    if (it == groups_.end()) return std::nullopt;
    for (const auto& [field, e] : it->second) {
      if (field == k.field) return e;
    }
    return std::nullopt;
  }

  void put(const key& k, const entry& e) {
    std::lock_guard lock(mu_);
    if (count_ >= k_max_entries && !groups_.contains(k.group)) {
      count_ -= groups_.begin()->second.size();
      groups_.erase(groups_.begin());
    }
    auto& fields = groups_[k.group];
    for (auto& [field, old] : fields) {
      if (field == k.field) {
        old = e;
        return;
      }
    }
    fields.emplace_back(k.field, e);
    ++count_;
  }

  void erase(const key& k) {
    std::lock_guard lock(mu_);
    auto it = groups_.find(k.group);
    if (it == groups_.end()) return;
    count_ -= std::erase_if(it->second, [&](const auto& f) { return f.first == k.field; });
  }

  bool erase_group(const std::string& group) {
    std::lock_guard lock(mu_);
    auto it = groups_.find(group);
    if (it == groups_.end()) return false;
    count_ -= it->second.size();
    groups_.erase(it);
    return true;
  }

  std::optional<manifest> get_manifest(const std::string& digest) {
    std::lock_guard lock(mu_);
    auto it = manifests_.find(digest);
    if (it == manifests_.end()) return std::nullopt;
    order_.splice(order_.begin(), order_, it->second.pos);
    return it->second.m;
  }

  void put_manifest(const std::string& digest, manifest m) {
    std::lock_guard lock(mu_);
    if (m.bytes.size() > max_bytes_ / 4) return;  // a giant manifest is not worth the room
    if (manifests_.contains(digest)) return;
    bytes_ += m.bytes.size();
    order_.push_front(digest);
    manifests_.emplace(digest, slot{std::move(m), order_.begin()});
    while (bytes_ > max_bytes_ && !order_.empty()) {
      auto victim = manifests_.find(order_.back());
      bytes_ -= victim->second.m.bytes.size();
      manifests_.erase(victim);
      order_.pop_back();
    }
  }

  void erase_manifest(const std::string& digest) {
    std::lock_guard lock(mu_);
    auto it = manifests_.find(digest);
    if (it == manifests_.end()) return;
    bytes_ -= it->second.m.bytes.size();
    order_.erase(it->second.pos);
    manifests_.erase(it);
  }

 private:
  static constexpr std::size_t k_max_entries = 200000;
  struct slot {
    manifest m;
    std::list<std::string>::iterator pos;
  };
  std::mutex mu_;
  std::unordered_map<std::string, std::vector<std::pair<std::string, entry>>> groups_;
  std::size_t count_ = 0;
  std::list<std::string> order_;  // most recently used first
  std::unordered_map<std::string, slot> manifests_;
  std::size_t bytes_ = 0;
  std::size_t max_bytes_;
};

// One upstream question being asked in this process; later askers wait for it.
struct flight {
  std::mutex mu;
  bool done = false;
  lookup result;
  core::wakeup_list waiters;
};

}  // namespace

struct cache::impl {
  metadata_options options;
  metrics::registry& metrics;
  std::shared_ptr<redis_client> backend;
  // The node-local copy: set once, at start or later (attach_local, when a
  // predecessor has released the cache directory), never taken away.
  std::unique_ptr<local_db> local_owned;
  std::atomic<local_db*> local{nullptr};
  memory_tier memory;
  // Answers confirmed before this time (unix ms) may have missed an invalidation
  // (the subscription was down): they are checked against the backend before use.
  std::atomic<std::int64_t> horizon_ms{0};
  std::chrono::milliseconds longest_ttl;

  std::mutex flights_mu;
  std::unordered_map<std::string, std::shared_ptr<flight>> flights;

  impl(metadata_options o, metrics::registry& m, std::shared_ptr<redis_client> b, std::unique_ptr<local_db> l)
      : options(std::move(o)),
        metrics(m),
        backend(std::move(b)),
        local_owned(std::move(l)),
        memory(options.memory_bytes) {
    local = local_owned.get();
    longest_ttl = options.tag_ttl;
    for (const auto& t : options.tag_ttl_overrides) longest_ttl = std::max(longest_ttl, t.ttl);
  }

  std::string backend_key(const std::string& k) const { return options.key_prefix + k; }
  std::string channel() const { return options.key_prefix + "invalidate"; }

  // With a cluster secret, every value this node writes to the backend carries an
  // HMAC over where it is written (key and field) and the value itself, so write
  // access to Dragonfly alone cannot change what nodes serve, nor move a genuine
  // answer to another tag. A value without a valid one is ignored and counted.
  std::string mac(std::string_view where, std::string_view value) const {
    return core::hmac_sha256_hex(options.secret, std::string(where) + '\n' + std::string(value));
  }
  std::string seal(std::string_view where, const std::string& value) const {
    if (options.secret.empty()) return value;
    return value + " hmac=" + mac(where, value);
  }
  std::optional<std::string> unseal(std::string_view where, std::string_view stored) const {
    if (options.secret.empty()) return std::string(stored);
    const auto at = stored.rfind(" hmac=");
    const auto value = stored.substr(0, at);
    if (at == std::string_view::npos || !core::constant_time_equal(stored.substr(at + 6), mac(where, value))) {
      metrics.meta_signature_failure();
      log::warn("metadata_signature_invalid",
                {{"key", std::string(where.substr(0, where.find('\n')))},
                 {"detail", "ignored: not written by a node with this cluster's secret"}});
      return std::nullopt;
    }
    return std::string(value);
  }
  std::string entry_location(const key& k) const { return backend_key(k.group) + '\n' + k.field; }
  std::optional<entry> decode_shared(const key& k, std::string_view stored) const {
    const auto value = unseal(entry_location(k), stored);
    if (!value) return std::nullopt;
    return decode(*value);
  }

  bool fresh(const entry& e, std::chrono::milliseconds ttl, std::int64_t now) const {
    const auto age = now - e.validated_ms;
    if (age < -60000) return false;  // from the future: a skewed clock, do not trust it
    return age < (e.found ? ttl : options.negative_ttl).count();
  }

  // Fresh, and confirmed after the last reconnection to the backend (so no
  // invalidation can have been missed): serve without asking anyone.
  bool usable_here(const entry& e, std::chrono::milliseconds ttl, std::int64_t now) const {
    return (!backend || e.validated_ms >= horizon_ms.load()) && fresh(e, ttl, now);
  }

  // ---- the tiers ----
  std::optional<entry> local_get(const key& k) {
    auto* db = local.load();
    if (db == nullptr) return std::nullopt;
    auto v = db->get("e:" + k.flat());
    if (!v) return std::nullopt;
    return decode(*v);
  }

  // Outer nullopt: the backend did not answer.
  asio::awaitable<std::optional<std::optional<entry>>> shared_get(const key& k) {
    std::vector<std::string> hget{"HGET", backend_key(k.group), k.field};
    auto r = co_await backend->command(std::move(hget));
    if (!r || !r->ok()) co_return std::nullopt;
    if (r->type != reply::kind::string) co_return std::optional<entry>();
    co_return decode_shared(k, r->str);
  }

  asio::awaitable<void> store(const key& k, const entry& e) {
    memory.put(k, e);
    if (auto* db = local.load()) db->put("e:" + k.flat(), encode(e));
    if (backend) {
      const auto group = backend_key(k.group);
      const auto keep =
          std::chrono::duration_cast<std::chrono::milliseconds>(options.max_stale + longest_ttl) + options.negative_ttl;
      std::vector<std::vector<std::string>> batch{{"HSET", group, k.field, seal(entry_location(k), encode(e))},
                                                  {"PEXPIRE", group, std::to_string(keep.count())}};
      co_await backend->pipeline(std::move(batch));
    }
  }

  asio::awaitable<void> drop(const key& k) {
    memory.erase(k);
    if (auto* db = local.load()) db->erase("e:" + k.flat());
    if (backend) {
      std::vector<std::string> hdel{"HDEL", backend_key(k.group), k.field};
      co_await backend->command(std::move(hdel));
    }
  }

  void drop_group_locally(const std::string& group) {
    memory.erase_group(group);
    if (auto* db = local.load()) {
      db->erase_prefix("e:" + group + "#");
      return;
    }
    // No local copy yet (a predecessor still holds it): drop the group from it once
    // it is attached, or that copy would bring the dropped answer back as fresh.
    std::lock_guard lock(pending_mu);
    if (local.load() != nullptr) {
      local.load()->erase_prefix("e:" + group + "#");
    } else {
      pending_drops.push_back(group);
    }
  }
  std::mutex pending_mu;  // guards pending_drops, and the attaching of `local`
  std::vector<std::string> pending_drops;

  // ---- one lookup ----
  asio::awaitable<lookup> run(const key& k, std::chrono::milliseconds ttl, std::string_view registry,
                              const fetch_fn& fetch) {
    const auto now = now_ms();
    auto best = memory.get(k);
    if (!best) {
      best = local_get(k);
      if (best) memory.put(k, *best);
    }
    if (best && usable_here(*best, ttl, now)) co_return lookup{hit(*best, outcome::fresh_hit), best, {}};

    std::string lock_key, token;
    bool locked = false;
    if (backend) {
      if (auto shared = co_await shared_get(k); shared && *shared) {
        const auto& s = **shared;
        if (!best || s.validated_ms >= best->validated_ms) {
          best = s;
          memory.put(k, s);
          if (auto* db = local.load()) db->put("e:" + k.flat(), encode(s));
          if (fresh(s, ttl, now)) co_return lookup{hit(s, outcome::shared_hit), best, {}};
        }
      }
      // Ask the upstream once for the whole cluster: whoever takes the lock asks,
      // the others wait for its answer to appear in the backend.
      lock_key = backend_key("lock:" + k.flat());
      token = random_token();
      const auto hold = std::to_string(options.lock_timeout.count());
      std::vector<std::string> set_nx{"SET", lock_key, token, "NX", "PX", hold};
      auto taken = co_await backend->command(std::move(set_nx));
      if (taken && taken->type == reply::kind::status) {
        locked = true;
      } else if (taken && taken->type == reply::kind::nil) {
        if (auto peer = co_await wait_for_peer(k, lock_key, best ? best->validated_ms : 0)) {
          memory.put(k, *peer);
          if (auto* db = local.load()) db->put("e:" + k.flat(), encode(*peer));
          co_return lookup{peer->found ? outcome::coalesced : outcome::negative, peer, {}};
        }
        // The holder finished without an answer (the upstream failed or refused) or
        // vanished: ask ourselves, in parallel with the other waiters, not one by one.
      }
    }

    const auto asked = now_ms();
    auto got = co_await fetch(best);
    lookup out;
    switch (got.status) {
      case fetched::result::ok: {
        entry e = std::move(got.answer);
        e.found = true;
        e.validated_ms = asked;
        if (best) {
          const bool changed = !best->found || best->digest != e.digest;
          metrics.meta_revalidation(registry, changed ? "changed" : "unchanged");
        }
        co_await store(k, e);
        out = lookup{outcome::upstream, e, {}};
        break;
      }
      case fetched::result::not_found: {
        entry e;
        e.found = false;
        e.validated_ms = asked;
        if (best) metrics.meta_revalidation(registry, "not_found");
        co_await store(k, e);  // replaces any positive answer: a 404 is never served over
        out = lookup{outcome::upstream, std::nullopt, std::move(got.reply)};
        break;
      }
      case fetched::result::refused:
        if (best) metrics.meta_revalidation(registry, "refused");
        co_await drop(k);
        out = lookup{outcome::refused, std::nullopt, std::move(got.reply)};
        break;
      case fetched::result::uncacheable:
        if (best) metrics.meta_revalidation(registry, "changed");
        co_await drop(k);
        out = lookup{outcome::upstream, std::nullopt, std::move(got.reply)};
        break;
      case fetched::result::unavailable:
        if (best) metrics.meta_revalidation(registry, "unavailable");
        if (best && best->found && asked - best->validated_ms < options.max_stale.count()) {
          log::warn("stale_served", {{"registry", registry},
                                     {"key", k.flat()},
                                     {"digest", best->digest},
                                     {"age_s", (asked - best->validated_ms) / 1000},
                                     {"upstream_status", got.reply.status}});
          out = lookup{outcome::stale, best, {}};
        } else {
          out = lookup{outcome::upstream, std::nullopt, std::move(got.reply)};
        }
        break;
    }
    if (locked) {
      std::vector<std::string> get{"GET", lock_key};
      auto holder = co_await backend->command(std::move(get));
      if (holder && holder->type == reply::kind::string && holder->str == token) {
        std::vector<std::string> del{"DEL", lock_key};
        co_await backend->command(std::move(del));
      }
    }
    co_return out;
  }

  static outcome hit(const entry& e, outcome how) { return e.found ? how : outcome::negative; }

  // Polls the backend until the lock holder's answer (newer than `seen_ms`) appears,
  // the lock goes away, or the lock's time runs out.
  asio::awaitable<std::optional<entry>> wait_for_peer(const key& k, const std::string& lock_key, std::int64_t seen_ms) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    const auto deadline = std::chrono::steady_clock::now() + std::min(options.lock_timeout, options.lock_wait);
    while (std::chrono::steady_clock::now() < deadline) {
      timer.expires_after(std::chrono::milliseconds(15));
      boost::system::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      // The lock first, then the answer, in one round trip: the holder writes its
      // answer before it releases the lock, so "released" with no newer answer means
      // it finished without one (the upstream failed or refused).
      std::vector<std::vector<std::string>> poll{{"EXISTS", lock_key}, {"HGET", backend_key(k.group), k.field}};
      auto r = co_await backend->pipeline(std::move(poll));
      if (!r || r->size() != 2) co_return std::nullopt;
      if ((*r)[1].type == reply::kind::string) {
        if (auto e = decode_shared(k, (*r)[1].str); e && e->validated_ms > seen_ms) co_return e;
      }
      if ((*r)[0].integer == 0) co_return std::nullopt;
    }
    co_return std::nullopt;
  }
};

cache::cache(metadata_options options, metrics::registry& metrics, std::shared_ptr<redis_client> backend,
             std::unique_ptr<local_db> local)
    : impl_(std::make_shared<impl>(std::move(options), metrics, std::move(backend), std::move(local))) {}

cache::~cache() = default;

const metadata_options& cache::options() const {
  return impl_->options;
}

// Drops answers too old to serve even stale, then manifests no answer points at.
static void sweep_local(local_db& db, const metadata_options& options, std::chrono::milliseconds longest_ttl) {
  const auto oldest = now_ms() - (options.max_stale + longest_ttl + options.negative_ttl).count();
  std::set<std::string> wanted;
  std::size_t dropped = 0;
  db.sweep("e:", [&](const std::string&, const std::string& v) {
    auto e = decode(v);
    if (!e || e->validated_ms < oldest) {
      ++dropped;
      return false;
    }
    if (e->found) wanted.insert(e->digest);
    return true;
  });
  db.sweep("m:", [&](const std::string& k, const std::string&) {
    if (wanted.contains(k.substr(2))) return true;
    ++dropped;
    return false;
  });
  log::info("metadata_local_store", {{"answers_kept", wanted.size()}, {"dropped", dropped}});
}

void cache::attach_local(std::unique_ptr<local_db> local) {
  auto& i = *impl_;
  if (!local || i.local.load() != nullptr) return;
  sweep_local(*local, i.options, i.longest_ttl);
  std::lock_guard lock(i.pending_mu);
  for (const auto& group : i.pending_drops) local->erase_prefix("e:" + group + "#");
  i.pending_drops.clear();
  i.local_owned = std::move(local);
  i.local.store(i.local_owned.get(), std::memory_order_release);
}

void cache::start() {
  auto& i = *impl_;
  if (auto* db = i.local.load()) sweep_local(*db, i.options, i.longest_ttl);
  if (i.backend) {
    std::weak_ptr<impl> weak = impl_;
    i.backend->subscribe(
        i.channel(),
        [weak](const std::string& message) {
          if (auto self = weak.lock()) {
            const auto group = self->unseal(self->channel(), message);
            if (!group) return;
            self->drop_group_locally(*group);
            self->metrics.meta_invalidation("peer", 1);
          }
        },
        [weak] {
          // Invalidations published while we were not listening are lost: whatever we
          // confirmed before now is checked against the backend before it is used.
          if (auto self = weak.lock()) self->horizon_ms = now_ms();
        });
  }
}

asio::awaitable<lookup> cache::resolve(const key& k, std::chrono::milliseconds ttl, std::string_view registry,
                                       std::string_view kind, const fetch_fn& fetch) {
  auto self = impl_;
  // The hot path: a fresh answer in memory needs no flight and no lock.
  if (auto e = self->memory.get(k); e && self->usable_here(*e, ttl, now_ms())) {
    const auto how = impl::hit(*e, outcome::fresh_hit);
    self->metrics.meta_lookup(registry, kind, name(how));
    co_return lookup{how, std::move(e), {}};  // NOLINT(clang-analyzer-cplusplus.Move): the coroutine's split body
  }
  const auto flat = k.flat();
  std::shared_ptr<flight> f;
  bool leader = false;
  {
    std::lock_guard lock(self->flights_mu);
    auto& slot = self->flights[flat];
    if (!slot) {
      slot = std::make_shared<flight>();
      leader = true;
    }
    f = slot;
  }
  if (!leader) {
    std::shared_ptr<asio::steady_timer> timer;
    {
      std::lock_guard lock(f->mu);
      if (!f->done) timer = f->waiters.park(co_await asio::this_coro::executor, 2 * self->options.lock_timeout);
    }
    if (timer) {
      co_await core::wakeup_list::wait(timer);
    }
    {
      std::lock_guard lock(f->mu);
      if (timer) f->waiters.forget(timer);
      if (f->done) {
        auto out = clone(f->result);
        if (out.answer && out.how != outcome::negative) out.how = outcome::coalesced;
        self->metrics.meta_lookup(registry, kind, name(out.how));
        co_return out;
      }
    }
    // The first asker is taking too long: ask on our own.
    co_return co_await self->run(k, ttl, registry, fetch);
  }

  auto finish = [&](lookup result) {
    std::vector<std::shared_ptr<asio::steady_timer>> wake;
    {
      std::lock_guard lock(f->mu);
      f->result = std::move(result);
      f->done = true;
      wake = f->waiters.take();
    }
    {
      std::lock_guard lock(self->flights_mu);
      self->flights.erase(flat);
    }
    core::wakeup_list::wake(wake);
  };
  lookup out;
  try {
    out = co_await self->run(k, ttl, registry, fetch);
  } catch (...) {
    finish(lookup{outcome::upstream, std::nullopt, core::error_reply(core::failure::internal, "internal error")});
    throw;
  }
  finish(clone(out));
  self->metrics.meta_lookup(registry, kind, name(out.how));
  co_return out;
}

asio::awaitable<void> cache::confirm(const key& k, const entry& confirmed) {
  entry e = confirmed;
  e.found = true;
  e.validated_ms = now_ms();
  co_await impl_->store(k, e);
}

asio::awaitable<std::optional<manifest>> cache::get_manifest(const std::string& digest) {
  auto self = impl_;
  if (auto m = self->memory.get_manifest(digest)) co_return m;
  if (auto* db = self->local.load()) {
    if (auto v = db->get("m:" + digest)) {
      auto m = unpack(*v);
      if (m && genuine(*m, digest)) {
        self->memory.put_manifest(digest, *m);
        co_return m;
      }
      db->erase("m:" + digest);
      self->metrics.meta_corrupt("local");
      log::error("metadata_corrupt", {{"tier", "local"}, {"digest", digest}});
    }
  }
  if (self->backend) {
    const auto k = self->backend_key("manifest:" + digest);
    std::vector<std::string> get{"GET", k};
    auto r = co_await self->backend->command(std::move(get));
    if (r && r->type == reply::kind::string) {
      auto m = unpack(r->str);
      if (m && genuine(*m, digest)) {
        self->memory.put_manifest(digest, *m);
        if (auto* db = self->local.load()) db->put("m:" + digest, r->str);
        co_return m;
      }
      {
        std::vector<std::string> del{"DEL", k};
        co_await self->backend->command(std::move(del));
      }
      self->metrics.meta_corrupt("shared");
      log::error("metadata_corrupt", {{"tier", "shared"}, {"digest", digest}, {"key", k}});
    }
  }
  co_return std::nullopt;
}

asio::awaitable<void> cache::put_manifest(const std::string& digest, const manifest& m) {
  auto self = impl_;
  const auto packed = pack(m);
  self->memory.put_manifest(digest, m);
  if (auto* db = self->local.load()) db->put("m:" + digest, packed);
  if (self->backend) {
    {
      std::vector<std::string> set{"SET", self->backend_key("manifest:" + digest), packed, "PX",
                                   std::to_string(self->options.manifest_ttl.count())};
      co_await self->backend->command(std::move(set));
    }
  }
}

asio::awaitable<bool> cache::invalidate(const std::vector<std::string>& groups) {
  auto self = impl_;
  bool told = true;
  for (const auto& g : groups) {
    self->drop_group_locally(g);
    if (self->backend) {
      std::vector<std::vector<std::string>> batch{{"DEL", self->backend_key(g)},
                                                  {"PUBLISH", self->channel(), self->seal(self->channel(), g)}};
      auto done = co_await self->backend->pipeline(std::move(batch));
      told = told && done.has_value();
    }
  }
  self->metrics.meta_invalidation("webhook", groups.size());
  co_return told;
}

}  // namespace berth::meta
