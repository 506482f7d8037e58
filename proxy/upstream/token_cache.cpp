#include "upstream/token_cache.hpp"

#include "core/wakeup.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <vector>

namespace berth::upstream {

namespace asio = boost::asio;

token_result parse_token_response(std::string_view body) {
  token_result result;
  boost::system::error_code ec;
  const auto doc = boost::json::parse(body, ec);
  const auto* obj = ec ? nullptr : doc.if_object();
  if (obj == nullptr) {
    result.error = "token service sent no JSON object";
    return result;
  }
  for (const char* k : {"token", "access_token"}) {
    if (const auto* v = obj->if_contains(k); v && v->is_string() && !v->get_string().empty()) {
      result.token = std::string(v->get_string());
      break;
    }
  }
  if (const auto* v = obj->if_contains("expires_in"); v && v->is_number()) {
    // A double from the wire: compare before converting (a cast of 1e300 is UB).
    const double seconds = v->to_number<double>();
    constexpr double k_day = 24 * 3600;
    if (seconds >= 1)
      result.expires_in = std::chrono::seconds(static_cast<long long>(seconds < k_day ? seconds : k_day));
  }
  if (result.token.empty()) result.error = "token service sent no token";
  return result;
}

struct token_cache::flight {
  bool done = false;
  token_result result;
  core::wakeup_list waiters;
};

token_cache::clock::duration token_cache::margin_for(std::chrono::seconds ttl) {
  return std::min<clock::duration>(std::chrono::seconds(30), std::chrono::duration_cast<clock::duration>(ttl) / 5);
}

std::string token_cache::peek(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.token.empty() || clock::now() >= it->second.use_until) return {};
  return it->second.token;
}

std::size_t token_cache::size() {
  std::lock_guard lock(mu_);
  return entries_.size();
}

void token_cache::invalidate(const std::string& key, const std::string& token) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.token == token) it->second.token.clear();
}

asio::awaitable<token_result> token_cache::get(const std::string& key, fetcher fetch) {
  const auto executor = co_await asio::this_coro::executor;
  std::shared_ptr<flight> joined;
  std::shared_ptr<asio::steady_timer> timer;
  {
    std::lock_guard lock(mu_);
    auto& e = entries_[key];
    if (!e.token.empty() && clock::now() < e.use_until) {
      token_result r;
      r.token = e.token;
      r.status = 200;
      co_return r;
    }
    if (e.in_flight) {
      // Register before suspending; the wake-up is posted to this executor, so it
      // cannot run before async_wait below has started (no lost wake-up).
      joined = e.in_flight;
      timer = joined->waiters.park(executor, wait_limit_);
    } else {
      e.in_flight = std::make_shared<flight>();
    }
  }

  if (joined) {
    co_await core::wakeup_list::wait(timer);
    std::lock_guard lock(mu_);
    joined->waiters.forget(timer);
    if (joined->done) co_return joined->result;
    token_result timeout;
    timeout.error = "timed out waiting for a token fetch under way";
    co_return timeout;
  }

  token_result result;
  try {
    result = co_await fetch();
  } catch (const std::exception& ex) {
    result = token_result{};
    result.error = ex.what();
  }

  std::vector<std::shared_ptr<asio::steady_timer>> to_wake;
  {
    std::lock_guard lock(mu_);
    auto& e = entries_[key];
    auto f = std::move(e.in_flight);
    if (result.ok()) {
      const auto ttl = result.expires_in.count() > 0 ? result.expires_in : k_default_ttl;
      e.token = result.token;
      e.use_until = clock::now() + ttl - margin_for(ttl);
    }
    f->done = true;
    f->result = result;
    to_wake = f->waiters.take();
  }
  core::wakeup_list::wake(to_wake);
  co_return result;
}

}  // namespace berth::upstream
