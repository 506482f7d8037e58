#pragma once
// Bearer tokens per (registry, realm, service, scope), shared by every worker
// thread. A token is fetched once however many requests want it at the same
// moment: the first caller fetches, the others wait for its answer (success or
// failure). Thread-safe; waiting is asynchronous on the caller's executor.
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace berth::upstream {

struct token_result {
  std::string token;                  // empty on failure
  std::chrono::seconds expires_in{};  // <= 0: the spec's default of 60 s
  unsigned status = 0;                // the token service's HTTP status (0: no answer)
  std::string error;                  // why it failed, for logs and the client
  bool timed_out = false;             // the token service did not answer in time (504, not 502)
  bool ok() const { return !token.empty(); }
};

// Reads a token service's 200 body (`{"token"|"access_token", "expires_in"}`,
// Docker token auth spec): `token` set on success, else `error` says why. An
// `expires_in` that is not a positive number is left at 0 (the default); one over a
// day is cut to a day.
token_result parse_token_response(std::string_view body);

class token_cache {
 public:
  using clock = std::chrono::steady_clock;
  using fetcher = std::function<boost::asio::awaitable<token_result>()>;

  // How long before expiry a token stops being handed out: min(30 s, ttl / 5).
  static clock::duration margin_for(std::chrono::seconds ttl);
  static constexpr std::chrono::seconds k_default_ttl{60};

  explicit token_cache(std::chrono::milliseconds wait_limit = std::chrono::seconds(60)) : wait_limit_(wait_limit) {}

  // A valid cached token or empty.
  std::string peek(const std::string& key);

  // A valid token: the cached one, the answer of a fetch under way, or the result of
  // calling `fetch` (in this coroutine). Failures are handed to every waiter and not cached.
  boost::asio::awaitable<token_result> get(const std::string& key, fetcher fetch);

  // Drops `token` for `key` (a 401 said it is no longer good). A newer token is kept.
  void invalidate(const std::string& key, const std::string& token);

  std::size_t size();

 private:
  struct flight;
  struct entry {
    std::string token;
    clock::time_point use_until{};
    std::shared_ptr<flight> in_flight;
  };

  std::chrono::milliseconds wait_limit_;
  std::mutex mu_;  // guards entries_ and every flight's state
  std::map<std::string, entry> entries_;
};

}  // namespace berth::upstream
