#include "meta/redis.hpp"

#include <hiredis/hiredis.h>
#include <poll.h>

#include <atomic>
#include <boost/asio/this_coro.hpp>
#include <boost/url/parse.hpp>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "core/log.hpp"
#include "core/wakeup.hpp"
#include "metrics/metrics.hpp"

namespace berth::meta {

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;

std::optional<redis_options> parse_redis_url(std::string_view url, std::string& error) {
  auto u = boost::urls::parse_uri(boost::core::string_view(url.data(), url.size()));
  if (!u) {
    error = "not a URL";
    return std::nullopt;
  }
  if (u->scheme() == "rediss") {
    error = "rediss:// (TLS) is not supported: the Debian 12 hiredis has no TLS";
    return std::nullopt;
  }
  if (u->scheme() != "redis") {
    error = "must start with redis://";
    return std::nullopt;
  }
  redis_options o;
  o.host = std::string(u->host_address());
  if (o.host.empty()) {
    error = "has no host";
    return std::nullopt;
  }
  if (u->has_port()) {
    o.port = static_cast<int>(u->port_number());
    if (o.port <= 0) {
      error = "has a bad port";
      return std::nullopt;
    }
  }
  if (u->has_userinfo()) {
    o.username = std::string(u->user());
    o.password = std::string(u->password());
  }
  const auto path = std::string(u->path());
  if (!path.empty() && path != "/") {
    try {
      std::size_t used = 0;
      o.db = std::stoi(path.substr(1), &used);
      if (used != path.size() - 1 || o.db < 0) throw std::invalid_argument(path);
    } catch (const std::exception&) {
      error = "path must be a database number such as /0";
      return std::nullopt;
    }
  }
  return o;
}

namespace {

reply convert(const redisReply* r) {
  reply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = reply::kind::string;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = reply::kind::status;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = reply::kind::error;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = reply::kind::integer;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = reply::kind::array;
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(convert(r->element[i]));
      break;
    default: out.type = reply::kind::nil;
  }
  return out;
}

timeval to_timeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000), static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
}

// One command and its answer, shared by the waiting coroutine and a pool thread.
struct job {
  std::vector<std::vector<std::string>> commands;  // sent together (pipelined)
  clock_type::time_point deadline;
  std::mutex mu;  // guards below
  bool done = false;
  std::optional<std::vector<reply>> result;
  core::wakeup_list waiters;
};

}  // namespace

struct redis_client::impl {
  redis_options options;
  metrics::registry& metrics;

  std::mutex mu;  // guards queue, stopping, retry_after, failures
  std::condition_variable cv;
  std::deque<std::shared_ptr<job>> queue;
  bool stopping = false;
  clock_type::time_point retry_after{};
  int failures = 0;
  std::atomic<bool> up{false};
  std::vector<std::thread> threads;

  impl(redis_options o, metrics::registry& m) : options(std::move(o)), metrics(m) {}

  void set_up(bool now_up, std::string_view why) {
    const bool was = up.exchange(now_up);
    metrics.meta_backend_up(now_up);
    if (was != now_up) {
      if (now_up) {
        log::info("metadata_backend_up", {{"host", options.host}, {"port", options.port}});
      } else {
        log::warn("metadata_backend_down", {{"host", options.host}, {"port", options.port}, {"error", why}});
      }
    }
  }

  static void finish(const std::shared_ptr<job>& j, std::optional<std::vector<reply>> r) {
    std::vector<std::shared_ptr<asio::steady_timer>> wake;
    {
      std::lock_guard lock(j->mu);
      j->result = std::move(r);
      j->done = true;
      wake = j->waiters.take();
    }
    core::wakeup_list::wake(wake);
  }

  // A connected, authenticated context on the configured database, or null.
  redisContext* connect(std::string& why) {
    redisContext* c = redisConnectWithTimeout(options.host.c_str(), options.port, to_timeval(options.connect_timeout));
    if (c == nullptr || c->err) {
      why = c ? c->errstr : "out of memory";
      if (c) redisFree(c);
      return nullptr;
    }
    redisSetTimeout(c, to_timeval(options.command_timeout));
    auto run = [&](const std::vector<std::string>& argv) {
      std::vector<const char*> args;
      std::vector<size_t> lens;
      for (const auto& a : argv) {
        args.push_back(a.data());
        lens.push_back(a.size());
      }
      auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data()));
      if (r == nullptr) {
        why = c->errstr;
        return false;
      }
      const bool ok = r->type != REDIS_REPLY_ERROR;
      // The reply text never holds the password; AUTH errors are "WRONGPASS ..." and the like.
      if (!ok) why = std::string(r->str, r->len);
      freeReplyObject(r);
      return ok;
    };
    if (!options.password.empty()) {
      const bool ok = options.username.empty() ? run({"AUTH", options.password})
                                               : run({"AUTH", options.username, options.password});
      if (!ok) {
        redisFree(c);
        return nullptr;
      }
    }
    if (options.db != 0 && !run({"SELECT", std::to_string(options.db)})) {
      redisFree(c);
      return nullptr;
    }
    return c;
  }

  // After a failure: commands fail fast until the next attempt, 200 ms to 5 s away.
  void back_off() {
    std::lock_guard lock(mu);
    failures = std::min(failures + 1, 6);
    retry_after = clock_type::now() + std::min<clock_type::duration>(options.retry_backoff * (1 << (failures - 1)),
                                                                     std::chrono::seconds(5));
  }

  // Sleeps up to `d`, in short steps so that a stop is noticed. False when stopping.
  bool sleep_unless_stopping(clock_type::duration d) {
    const auto until = clock_type::now() + d;
    while (clock_type::now() < until) {
      {
        std::lock_guard lock(mu);
        if (stopping) return false;
      }
      std::this_thread::sleep_for(
          std::min<clock_type::duration>(std::chrono::milliseconds(50), until - clock_type::now()));
    }
    std::lock_guard lock(mu);
    return !stopping;
  }

  bool is_stopping() {
    std::lock_guard lock(mu);
    return stopping;
  }

  // The subscriber thread: SUBSCRIBE, then read messages as they come. The socket
  // is polled so that a stop is noticed; a PING every few seconds, and a
  // connection that stays silent three times as long is replaced.
  void subscriber(const std::string& channel, const std::function<void(const std::string&)>& on_message,
                  const std::function<void()>& on_subscribed) {
    int failures_here = 0;
    while (!is_stopping()) {
      std::string why;
      redisContext* c = connect(why);
      if (c != nullptr) {
        const char* argv[] = {"SUBSCRIBE", channel.c_str()};
        const size_t lens[] = {9, channel.size()};
        auto* r = static_cast<redisReply*>(redisCommandArgv(c, 2, argv, lens));
        if (r == nullptr || r->type == REDIS_REPLY_ERROR) {
          why = r ? std::string(r->str, r->len) : std::string(c->errstr);
          if (r) freeReplyObject(r);
          redisFree(c);
          c = nullptr;
        } else {
          freeReplyObject(r);
        }
      }
      if (c == nullptr) {
        failures_here = std::min(failures_here + 1, 6);
        set_up(false, why);
        if (!sleep_unless_stopping(std::min<clock_type::duration>(std::chrono::milliseconds(100 << failures_here),
                                                                  std::chrono::seconds(5))))
          break;
        continue;
      }
      failures_here = 0;
      set_up(true, "");
      on_subscribed();
      auto last_data = clock_type::now();
      auto last_ping = last_data;
      const auto ping_every = std::chrono::seconds(5);
      while (!is_stopping()) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(c, &raw) != REDIS_OK) break;
        if (raw != nullptr) {
          auto* m = static_cast<redisReply*>(raw);
          // ["message", channel, payload]; PING answers ["pong", ""] in this mode.
          if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 && m->element[0]->type == REDIS_REPLY_STRING &&
              std::string_view(m->element[0]->str, m->element[0]->len) == "message" &&
              m->element[2]->type == REDIS_REPLY_STRING) {
            on_message(std::string(m->element[2]->str, m->element[2]->len));
          }
          freeReplyObject(m);
          continue;
        }
        pollfd p{c->fd, POLLIN, 0};
        const int n = ::poll(&p, 1, 250);
        const auto now = clock_type::now();
        if (n < 0 && errno != EINTR) break;
        if (n > 0) {
          if (redisBufferRead(c) != REDIS_OK) break;
          last_data = now;
          continue;
        }
        if (now - last_data > 3 * ping_every) break;
        if (now - last_ping > ping_every) {
          last_ping = now;
          int done = 0;
          if (redisAppendCommand(c, "PING") != REDIS_OK) break;
          while (!done) {
            if (redisBufferWrite(c, &done) != REDIS_OK) break;
          }
          if (!done) break;
        }
      }
      const std::string lost = c->err ? std::string(c->errstr) : std::string("connection lost");
      redisFree(c);
      if (is_stopping()) break;
      set_up(false, lost);
    }
  }

  void worker() {
    redisContext* c = nullptr;
    while (true) {
      std::shared_ptr<job> j;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping && queue.empty()) break;
        j = std::move(queue.front());
        queue.pop_front();
      }
      const auto started = clock_type::now();
      if (started >= j->deadline) {  // waited too long in the queue: the caller has given up
        finish(j, std::nullopt);
        continue;
      }
      {
        // Backing off (this or another connection failed or timed out): fail fast,
        // the caller has other tiers. Every connection obeys it, also one still
        // open: a stalled backend stalls them all, so trying the next one would
        // cost another full timeout.
        std::lock_guard lock(mu);
        if (started < retry_after) {
          metrics.meta_command("down", std::chrono::duration<double>(0));
          finish(j, std::nullopt);
          continue;
        }
      }
      if (c == nullptr) {
        std::string why;
        c = connect(why);
        if (c == nullptr) {
          back_off();
          set_up(false, why);
          metrics.meta_command("error", clock_type::now() - started);
          finish(j, std::nullopt);
          continue;
        }
        {
          std::lock_guard lock(mu);
          failures = 0;
        }
        set_up(true, "");
      }
      // Pipelined: every command is written, then every answer read.
      bool sent = true;
      for (const auto& argv : j->commands) {
        std::vector<const char*> args;
        std::vector<size_t> lens;
        for (const auto& a : argv) {
          args.push_back(a.data());
          lens.push_back(a.size());
        }
        sent = sent && redisAppendCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data()) == REDIS_OK;
      }
      std::vector<reply> out;
      bool all_ok = true;
      for (std::size_t i = 0; sent && i < j->commands.size(); ++i) {
        void* raw = nullptr;
        if (redisGetReply(c, &raw) != REDIS_OK || raw == nullptr) {
          sent = false;
          break;
        }
        out.push_back(convert(static_cast<redisReply*>(raw)));
        all_ok = all_ok && out.back().ok();
        freeReplyObject(raw);
      }
      if (!sent) {
        // I/O error or timeout: this connection is done. Back off before the next
        // attempt, so that a stalled backend costs one timeout per backoff period,
        // not one per command.
        const std::string why = c->err ? std::string(c->errstr) : std::string("write failed");
        redisFree(c);
        c = nullptr;
        back_off();
        set_up(false, why);
        metrics.meta_command("error", clock_type::now() - started);
        finish(j, std::nullopt);
        continue;
      }
      if (!up.load()) {  // answered on a connection that outlived the failure of another
        {
          std::lock_guard lock(mu);
          failures = 0;
        }
        set_up(true, "");
      }
      metrics.meta_command(all_ok ? "ok" : "reply_error", clock_type::now() - started);
      finish(j, std::move(out));
    }
    if (c != nullptr) redisFree(c);
  }
};

redis_client::redis_client(redis_options options, metrics::registry& metrics)
    : impl_(std::make_shared<impl>(std::move(options), metrics)) {
  metrics.meta_backend_up(false);
  for (std::size_t i = 0; i < std::max<std::size_t>(1, impl_->options.connections); ++i) {
    impl_->threads.emplace_back([i = impl_] { i->worker(); });
  }
}

redis_client::~redis_client() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->threads) t.join();
}

void redis_client::subscribe(std::string channel, std::function<void(const std::string&)> on_message,
                             std::function<void()> on_subscribed) {
  std::lock_guard lock(impl_->mu);
  impl_->threads.emplace_back(
      [i = impl_, channel = std::move(channel), on_message = std::move(on_message),
       on_subscribed = std::move(on_subscribed)] { i->subscriber(channel, on_message, on_subscribed); });
}

bool redis_client::up() const {
  return impl_->up.load();
}

asio::awaitable<std::optional<reply>> redis_client::command(std::vector<std::string> argv) {
  std::vector<std::vector<std::string>> one;
  one.push_back(std::move(argv));
  auto r = co_await pipeline(std::move(one));
  if (!r || r->empty()) co_return std::nullopt;
  co_return std::move(r->front());
}

asio::awaitable<std::optional<std::vector<reply>>> redis_client::pipeline(
    std::vector<std::vector<std::string>> commands) {
  auto j = std::make_shared<job>();
  j->commands = std::move(commands);
  const auto limit = impl_->options.command_timeout;
  j->deadline = clock_type::now() + limit;
  std::shared_ptr<asio::steady_timer> timer;
  {
    // Parked before the job is queued: its answer cannot be lost.
    std::lock_guard lock(j->mu);
    timer = j->waiters.park(co_await asio::this_coro::executor, limit + std::chrono::milliseconds(50));
  }
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopping) co_return std::nullopt;
    impl_->queue.push_back(j);
  }
  impl_->cv.notify_one();
  co_await core::wakeup_list::wait(timer);
  std::lock_guard lock(j->mu);
  j->waiters.forget(timer);
  if (!j->done) {
    impl_->metrics.meta_command("timeout", limit);
    co_return std::nullopt;
  }
  co_return j->result;
}

}  // namespace berth::meta
