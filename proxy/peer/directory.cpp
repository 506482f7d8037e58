#include "peer/directory.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <condition_variable>
#include <random>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "meta/redis.hpp"
#include "metrics/metrics.hpp"

namespace berth::peer {

namespace asio = boost::asio;

namespace {

// Takes the claim when it is free or held by the node being replaced; answers who
// holds it afterwards. One round trip, atomic in the backend.
constexpr const char* k_claim_script =
    "local v = redis.call('GET', KEYS[1]) "
    "if (not v) or v == ARGV[2] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return ARGV[1] end "
    "return v";
constexpr const char* k_refresh_script =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

constexpr std::size_t k_batch = 512;
// Digests of a re-announcement queued a round (every 50 ms at most): 40 000 a second.
constexpr std::size_t k_announce_step = 2048;

}  // namespace

struct directory::state {
  asio::io_context io{1};
  std::mutex mu;  // guards everything below
  std::condition_variable sent_cv;
  struct pending {
    std::string op;
    std::vector<std::vector<std::string>> commands;
  };
  std::vector<pending> queue;
  std::uint64_t queued = 0;  // batches queued so far
  std::uint64_t sent = 0;    // ... and sent (or given up)
  bool stopping = false;
  bool running = false;
  std::mutex holdings_mu;  // held while `held` runs, so set_holdings(nullptr) waits for it
  holdings held;
};

directory::directory(std::shared_ptr<meta::redis_client> backend, options o, metrics::registry& metrics)
    : backend_(std::move(backend)), options_(std::move(o)), metrics_(metrics), state_(std::make_unique<state>()) {}

directory::~directory() {
  stop();
}

std::string directory::key(std::string_view kind, std::string_view id) const {
  std::string k = options_.prefix;
  k.append(kind).append(":").append(id);
  return k;
}

void directory::start() {
  {
    std::lock_guard lock(state_->mu);
    if (state_->running) return;
    state_->running = true;
  }
  thread_ = std::thread([this] { run(); });
}

void directory::set_holdings(holdings h) {
  std::lock_guard lock(state_->holdings_mu);
  state_->held = std::move(h);
}

std::optional<std::vector<std::string>> directory::holdings_now() {
  std::lock_guard lock(state_->holdings_mu);
  // No cache yet (a successor attaches it once its predecessor has let go): asked
  // again until there is one.
  if (!state_->held) return std::nullopt;
  return state_->held();
}

asio::awaitable<std::optional<bool>> directory::beat() {
  // GET: the previous beat, nil when the backend has forgotten this node (a restarted
  // or flushed Dragonfly, or this node away for three beats), and with it, perhaps,
  // what this node holds.
  std::vector<std::string> cmd{"SET",
                               key("node", options_.self),
                               std::to_string(core::unix_ms()),
                               "PX",
                               std::to_string(3 * options_.heartbeat.count()),
                               "GET"};
  const auto r = co_await backend_->command(std::move(cmd));
  const bool ok = r && r->ok();
  metrics_.directory_op("heartbeat", ok ? "ok" : "error");
  if (!ok) co_return std::nullopt;
  co_return r->type == meta::reply::kind::nil;
}

void directory::stop() {
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = true;
  }
  if (thread_.joinable()) thread_.join();
}

void directory::run() {
  auto loop = [this]() -> asio::awaitable<void> {
    asio::steady_timer timer(state_->io);
    using clock = std::chrono::steady_clock;
    auto next_beat = clock::now();
    auto next_announce = next_beat + options_.reannounce;
    bool announce = false;                // everything held is to be announced again
    bool lost_writes = false;             // writes failed: announce everything once the backend answers
    std::vector<std::string> announcing;  // ... the digests being announced, a step a round
    std::size_t announced = 0;
    // The heartbeat, also between the batches of a long drain (a node must not look
    // dead to the others while it announces a big cache).
    auto beat_if_due = [&]() -> asio::awaitable<void> {
      if (clock::now() < next_beat) co_return;
      next_beat = clock::now() + options_.heartbeat;
      const auto r = co_await beat();
      if (!r) co_return;
      if (*r || lost_writes) announce = true;  // forgotten, or what was written may be lost
      lost_writes = false;
    };
    while (true) {
      bool stopping = false;
      {
        std::lock_guard lock(state_->mu);
        stopping = state_->stopping;
      }
      if (!stopping) {
        co_await beat_if_due();
      }
      if (!stopping && clock::now() >= next_announce) {
        next_announce = clock::now() + options_.reannounce;
        announce = true;
      }
      if (announce && !stopping && announced == announcing.size()) {
        if (auto held = holdings_now()) {
          announcing = std::move(*held);
          announced = 0;
          announce = false;
          log::info("peer_reannounce", {{"blobs", static_cast<unsigned long long>(announcing.size())}});
        }
      }
      // A step of the announcement a round: the queue (and each drain) stays short.
      for (std::size_t n = 0; announced < announcing.size() && n < k_announce_step && !stopping; ++n) {
        announce_held(announcing[announced++]);
      }
      if (announced == announcing.size() && !announcing.empty()) {
        announcing = {};
        announced = 0;
      }
      std::vector<state::pending> batch;
      {
        std::lock_guard lock(state_->mu);
        batch.swap(state_->queue);
      }
      // Pipelined, at most k_batch commands a round trip.
      std::size_t i = 0;
      while (i < batch.size()) {
        std::vector<std::vector<std::string>> commands;
        std::vector<std::string> ops;
        std::size_t j = i;
        for (; j < batch.size() && commands.size() < k_batch; ++j) {
          for (auto& c : batch[j].commands) commands.push_back(std::move(c));
          ops.push_back(batch[j].op);
        }
        const auto answers = co_await backend_->pipeline(std::move(commands));
        for (const auto& op : ops) metrics_.directory_op(op, answers ? "ok" : "error");
        if (!answers) {
          log::debug("peer_directory_write_failed", {{"commands", static_cast<unsigned long long>(j - i)}});
          lost_writes = true;
        }
        i = j;
        if (!stopping) {
          co_await beat_if_due();
        }
      }
      {
        std::lock_guard lock(state_->mu);
        state_->sent += batch.size();
      }
      state_->sent_cv.notify_all();
      if (stopping) {
        std::lock_guard lock(state_->mu);
        if (state_->queue.empty()) co_return;
        continue;
      }
      timer.expires_after(std::chrono::milliseconds(50));
      boost::system::error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  };
  asio::co_spawn(state_->io, loop(), asio::detached);
  try {
    state_->io.run();
  } catch (const std::exception& e) {
    log::error("task_exception", {{"task", "peer_directory"}, {"error", e.what()}});
    metrics_.task_exception("peer_directory");
  }
  std::lock_guard lock(state_->mu);
  state_->sent = state_->queued;  // nothing more will be sent: never leave flush() waiting
  state_->sent_cv.notify_all();
}

void directory::queue(std::vector<std::vector<std::string>> commands, std::string_view op) {
  std::lock_guard lock(state_->mu);
  if (state_->stopping) return;
  state_->queue.push_back({std::string(op), std::move(commands)});
  ++state_->queued;
}

void directory::flush() {
  std::unique_lock lock(state_->mu);
  if (!state_->running) return;
  const auto target = state_->queued;
  state_->sent_cv.wait(lock, [&] { return state_->sent >= target; });
}

void directory::published(const std::string& digest, std::uint64_t) {
  const auto k = key("blob", digest);
  queue({{"SADD", k, options_.self},
         {"PEXPIRE", k, std::to_string(options_.holder_ttl.count())},
         {"SREM", key("relay", digest), options_.self}},
        "announce");
}

void directory::announce_held(const std::string& digest) {
  const auto k = key("blob", digest);
  queue({{"SADD", k, options_.self}, {"PEXPIRE", k, std::to_string(options_.holder_ttl.count())}}, "announce");
}

void directory::relay(const std::string& digest, std::chrono::milliseconds hold) {
  const auto k = key("relay", digest);
  queue({{"SADD", k, options_.self}, {"PEXPIRE", k, std::to_string(hold.count())}}, "relay");
}

void directory::unrelay(const std::string& digest) {
  queue({{"SREM", key("relay", digest), options_.self}}, "relay");
}

void directory::evicted(const std::string& digest, std::uint64_t) {
  queue({{"SREM", key("blob", digest), options_.self}}, "withdraw");
}

void directory::invalidated(const std::string& digest, std::string_view) {
  queue({{"SREM", key("blob", digest), options_.self}}, "withdraw");
}

void directory::forget_holder(const std::string& digest, const std::string& node) {
  queue({{"SREM", key("blob", digest), node}}, "withdraw");
}

asio::awaitable<directory::where> directory::lookup(const std::string& digest) {
  where out;
  const auto n = std::to_string(options_.max_candidates);
  std::vector<std::vector<std::string>> ask{
      {"SRANDMEMBER", key("blob", digest), n}, {"GET", key("fill", digest)}, {"SRANDMEMBER", key("relay", digest), n}};
  const auto first = co_await backend_->pipeline(std::move(ask));
  if (!first || first->size() != 3 || !(*first)[0].ok() || !(*first)[2].ok()) {
    metrics_.directory_op("lookup", "error");
    co_return out;
  }
  // Holders first, then relays: one heartbeat read for both.
  std::vector<std::string> members;
  std::size_t holders = 0;
  for (const std::size_t set : {std::size_t{0}, std::size_t{2}}) {
    for (const auto& m : (*first)[set].elements) {
      if (m.type == meta::reply::kind::string && m.str != options_.self) members.push_back(m.str);
    }
    if (set == 0) holders = members.size();
  }
  if ((*first)[1].type == meta::reply::kind::string) out.filler = (*first)[1].str;
  if (!members.empty()) {
    // Only nodes whose heartbeat is current: a dead holder costs nobody a timeout.
    std::vector<std::string> mget{"MGET"};
    for (const auto& m : members) mget.push_back(key("node", m));
    const auto beats = co_await backend_->command(std::move(mget));
    if (!beats || beats->type != meta::reply::kind::array || beats->elements.size() != members.size()) {
      metrics_.directory_op("lookup", "error");
      co_return out;
    }
    for (std::size_t i = 0; i < members.size(); ++i) {
      if (beats->elements[i].type != meta::reply::kind::string) continue;
      if (i < holders) {
        out.holders.push_back(members[i]);
      } else if (std::find(out.holders.begin(), out.holders.end(), members[i]) == out.holders.end()) {
        out.relays.push_back(members[i]);
      }
    }
  }
  thread_local std::minstd_rand shuffle_rng{std::random_device{}()};
  std::shuffle(out.holders.begin(), out.holders.end(), shuffle_rng);
  std::shuffle(out.relays.begin(), out.relays.end(), shuffle_rng);
  out.answered = true;
  metrics_.directory_op("lookup", "ok");
  co_return out;
}

asio::awaitable<std::string> directory::claim(const std::string& digest, const std::string& replacing,
                                              std::chrono::milliseconds hold) {
  std::vector<std::string> eval{"EVAL",
                                k_claim_script,
                                "1",
                                key("fill", digest),
                                options_.self,
                                replacing.empty() ? std::string("\n") : replacing,
                                std::to_string(hold.count())};
  const auto r = co_await backend_->command(std::move(eval));
  if (!r || r->type != meta::reply::kind::string) {
    metrics_.directory_op("lock", "error");
    if (r && r->type == meta::reply::kind::error) log::warn("peer_claim_failed", {{"error", r->str}});
    co_return std::string();
  }
  metrics_.directory_op("lock", "ok");
  co_return r->str;
}

asio::awaitable<void> directory::refresh(const std::string& digest, std::chrono::milliseconds hold) {
  std::vector<std::string> eval{
      "EVAL", k_refresh_script, "1", key("fill", digest), options_.self, std::to_string(hold.count())};
  const auto r = co_await backend_->command(std::move(eval));
  metrics_.directory_op("lock", r && r->ok() ? "ok" : "error");
}

}  // namespace berth::peer
