#pragma once
// A Redis-protocol client for the shared metadata cache (Dragonfly in the cluster,
// redis-server in tests). Uses only commands Dragonfly supports. Commands run on a
// small pool of blocking hiredis connections on their own threads, never on the I/O
// threads; a coroutine hands its command over and is woken when the answer is in.
// Every command has a timeout; a backend that is down is retried with backoff and,
// meanwhile, commands fail fast so callers fall back to their other tiers.
// Thread-safe. The only module that includes hiredis.
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace berth::metrics {
class registry;
}

namespace berth::meta {

struct redis_options {
  std::string host = "127.0.0.1";
  int port = 6379;
  int db = 0;
  std::string username;  // ACL user (Redis 6+, Dragonfly); empty: default user
  std::string password;  // empty: no AUTH
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::milliseconds command_timeout{500};
  std::size_t connections = 2;
  // After a failure or timeout every command fails fast for this long, doubled for each
  // failure in a row, at most 5 s; the first command after it tries again.
  std::chrono::milliseconds retry_backoff{200};
};

// redis://[user[:password]@]host[:port][/db]. Returns nullopt and sets `error` if malformed.
std::optional<redis_options> parse_redis_url(std::string_view url, std::string& error);

struct reply {
  enum class kind { nil, string, integer, array, status, error };
  kind type = kind::nil;
  std::string str;  // string, status, error
  long long integer = 0;
  std::vector<reply> elements;
  bool ok() const { return type != kind::error; }
};

class redis_client {
 public:
  redis_client(redis_options options, metrics::registry& metrics);
  ~redis_client();
  redis_client(const redis_client&) = delete;
  redis_client& operator=(const redis_client&) = delete;

  // Runs one command, e.g. {"SET", key, value, "NX", "PX", "5000"}. nullopt when the
  // backend is unreachable, down (backing off) or slower than command_timeout.
  boost::asio::awaitable<std::optional<reply>> command(std::vector<std::string> argv);
  // Several commands in one round trip; one answer each, in order (an error reply
  // among them is an answer). nullopt as for command().
  boost::asio::awaitable<std::optional<std::vector<reply>>> pipeline(std::vector<std::vector<std::string>> commands);

  // Listens on `channel` on a connection of its own, on a thread of its own,
  // reconnecting with backoff. `on_message` runs on that thread for each message;
  // `on_subscribed` each time the subscription (re)starts, because whatever was
  // published while it was down is lost. Call at most once.
  void subscribe(std::string channel, std::function<void(const std::string&)> on_message,
                 std::function<void()> on_subscribed);

  // The last known state of the backend (for /metrics and degraded-mode decisions).
  bool up() const;

  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace berth::meta
