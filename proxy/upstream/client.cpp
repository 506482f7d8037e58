#include "upstream/client.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <deque>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "core/hasher.hpp"
#include "core/log.hpp"
#include "metrics/metrics.hpp"
#include "upstream/challenge.hpp"
#include "upstream/token_cache.hpp"
#include "upstream/transport.hpp"

namespace berth::upstream {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// errors

namespace {
class category_impl : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "berth.upstream"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::connect_failed: return "upstream unreachable";
      case errc::timeout: return "upstream timed out";
      case errc::tls_failed: return "TLS handshake with upstream failed";
      case errc::protocol_error: return "upstream sent an invalid HTTP response";
      case errc::connection_lost: return "upstream connection lost mid-response";
      case errc::too_many_redirects: return "too many upstream redirects";
      case errc::bad_redirect: return "upstream redirect without a usable Location";
      case errc::redirect_refused: return "upstream redirect to a host or address Berth does not follow to";
      case errc::pool_exhausted: return "no upstream connection available";
      case errc::body_too_large: return "upstream response too large";
      case errc::token_failed: return "upstream token service failed";
      case errc::shutting_down: return "Berth is shutting down";
    }
    return "upstream error";
  }
};
}  // namespace

const boost::system::error_category& error_category() {
  static const category_impl c;
  return c;
}

// ---------------------------------------------------------------------------
// URLs

std::string origin::str() const {
  return scheme + "://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
}

std::string origin::host_header() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if ((scheme == "https" && port == "443") || (scheme == "http" && port == "80")) return h;
  return h + ":" + port;
}

std::optional<origin> parse_url(std::string_view url, std::string* target) {
  auto u = boost::urls::parse_uri(boost::core::string_view(url.data(), url.size()));
  if (!u) return std::nullopt;
  origin o;
  o.scheme = std::string(u->scheme());
  for (auto& c : o.scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (o.scheme != "http" && o.scheme != "https") return std::nullopt;
  if (!u->has_authority() || u->encoded_host().empty() || u->has_userinfo()) return std::nullopt;
  o.host = u->host_type() == boost::urls::host_type::ipv6 ? std::string(u->encoded_host_address())
                                                          : std::string(u->encoded_host());
  if (o.host.empty()) return std::nullopt;
  for (auto& c : o.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  o.port = u->has_port() ? std::string(u->port()) : (o.tls() ? "443" : "80");
  if (o.port.empty()) return std::nullopt;
  if (target) {
    std::string t = u->encoded_path().empty() ? "/" : std::string(u->encoded_path());
    if (u->has_query()) t += "?" + std::string(u->encoded_query());
    *target = std::move(t);
  }
  return o;
}

// ---------------------------------------------------------------------------
// registry

struct registry::impl {
  registry_options options;
  origin endpoint;
  token_cache& tokens;
  metrics::registry& metrics;
  ssl::context tls{ssl::context::tls_client};
  credentials_provider creds;

  std::mutex mu;  // guards the challenge facts below
  std::string bearer_realm;
  std::string bearer_service;
  bool basic = false;

  impl(registry_options o, token_cache& t, metrics::registry& m)
      : options(std::move(o)), tokens(t), metrics(m), creds(options.credentials, [this](std::string_view result) {
          metrics.credentials_load(options.id(), result);
        }) {}

  // May the robot credentials be sent to this origin? Never from https down to http;
  // the endpoint itself always; then realm_hosts, by default the endpoint's host on
  // any port (Harbor's and the CNCF registry's token services live there).
  bool may_receive_credentials(const origin& o) const {
    if (endpoint.tls() && !o.tls()) return false;
    if (o.host == endpoint.host && o.port == endpoint.port) return true;
    if (options.realm_hosts.empty()) return o.host == endpoint.host;
    return listed(options.realm_hosts, o);
  }

  // Whether a redirect may lead to `o`, and on what terms (public_only).
  bool may_redirect_to(origin& o) const {
    if (o.host == endpoint.host && o.port == endpoint.port) return true;  // the registry itself
    if (listed(options.redirect_hosts, o)) return true;
    if (!options.redirect_hosts.empty()) return false;
    o.public_only = true;  // any host, but not an internal address
    return true;
  }

  static bool listed(const std::vector<std::string>& hosts, const origin& o) {
    for (const auto& h : hosts) {
      if (normalize_registry_host(h) == o.host || normalize_registry_host(h) == o.host + ":" + o.port) return true;
    }
    return false;
  }
};

registry::registry(registry_options options, token_cache& tokens, metrics::registry& metrics)
    : impl_(std::make_unique<impl>(std::move(options), tokens, metrics)) {
  auto o = parse_url(impl_->options.endpoint);
  if (!o) throw std::runtime_error("endpoint is not an http(s) URL: " + impl_->options.endpoint);
  impl_->endpoint = *o;
  auto& ctx = impl_->tls;
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                  ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  ctx.set_verify_mode(ssl::verify_peer);
  ctx.set_default_verify_paths();
  if (!impl_->options.ca_file.empty()) {
    error_code ec;
    ctx.load_verify_file(impl_->options.ca_file, ec);
    if (ec) throw std::runtime_error("ca_file " + impl_->options.ca_file + ": " + ec.message());
  }
}

registry::~registry() = default;
const registry_options& registry::options() const {
  return impl_->options;
}
const origin& registry::endpoint() const {
  return impl_->endpoint;
}
std::string registry::load_credentials() {
  return impl_->creds.load_now();
}

// ---------------------------------------------------------------------------
// connections and the pool

namespace {

struct connection {
  connection(const asio::any_io_executor& ex, origin o, std::string k) : org(std::move(o)), key(std::move(k)), t(ex) {}
  ~connection() {
    if (busy_set != nullptr) busy_set->erase(this);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  // The pool's set of connections in use, while this one is in it (shutdown closes them).
  std::unordered_set<connection*>* busy_set = nullptr;
  origin org;
  std::string key;
  transport t;
  beast::flat_buffer buffer;  // bytes read past what the last parse consumed
  clock_type::time_point idle_since{};

  // An idle keep-alive connection the server has closed (or sent anything on) is
  // not reusable.
  bool looks_alive() { return buffer.size() == 0 && t.reusable_when_idle(); }
  void close() { t.close(); }
};

}  // namespace

struct client::impl {
  struct host_slot {
    std::vector<std::unique_ptr<connection>> idle;
    std::size_t active = 0;
    std::deque<std::shared_ptr<asio::steady_timer>> waiters;
  };

  asio::any_io_executor executor;
  pool_options options;
  metrics::registry& metrics;
  std::unordered_map<std::string, host_slot> hosts;
  std::unordered_set<connection*> busy;
  bool stopping = false;
  ssl::context plain{ssl::context::tls_client};  // for fetch_direct's plain-HTTP exchanges (never used for TLS)
  std::unique_ptr<ssl::context> direct_tls;      // fetch_direct's TLS (peers.tls), null when not configured
  std::string direct_name;                       // ... and the name the server's certificate must carry

  // Takes `c` into use: counted in `busy` until it is released or destroyed.
  std::unique_ptr<connection> in_use(std::unique_ptr<connection> c) {
    busy.insert(c.get());
    c->busy_set = &busy;
    return c;
  }

  void shutdown() {
    stopping = true;
    for (auto& [key, slot] : hosts) {
      slot.idle.clear();  // their transports close and cancel their timers
      while (!slot.waiters.empty()) {
        slot.waiters.front()->cancel();
        slot.waiters.pop_front();
      }
    }
    for (auto* c : busy) c->close();  // the reads and writes under way fail now
  }

  impl(asio::any_io_executor ex, pool_options o, metrics::registry& m)
      : executor(std::move(ex)), options(o), metrics(m) {}

  void wake_one(host_slot& slot) {
    while (!slot.waiters.empty()) {
      auto t = std::move(slot.waiters.front());
      slot.waiters.pop_front();
      if (t->cancel() > 0) return;  // someone was really waiting
    }
  }

  void release(std::unique_ptr<connection> c, bool reusable) {
    busy.erase(c.get());
    c->busy_set = nullptr;
    auto& slot = hosts[c->key];
    if (slot.active > 0) --slot.active;
    if (reusable && !stopping && slot.idle.size() < options.max_idle_per_host) {
      c->idle_since = clock_type::now();
      slot.idle.push_back(std::move(c));
    } else {
      c->close();
    }
    wake_one(slot);
  }

  // A connection to `o`: an idle pooled one (reused = true) or a new one.
  asio::awaitable<std::unique_ptr<connection>> acquire(const origin& o, ssl::context& tls, bool& reused,
                                                       error_code& ec) {
    const std::string key =
        o.str() + (o.public_only ? "|public|" : "|") + std::to_string(reinterpret_cast<std::uintptr_t>(&tls));
    if (stopping) {
      ec = errc::shutting_down;
      co_return nullptr;
    }
    auto& slot = hosts[key];
    const auto now = clock_type::now();
    while (!slot.idle.empty()) {
      auto c = std::move(slot.idle.back());
      slot.idle.pop_back();
      if (now - c->idle_since < options.idle_timeout && c->looks_alive()) {
        ++slot.active;
        reused = true;
        co_return in_use(std::move(c));  // NOLINT(clang-analyzer-cplusplus.Move): the coroutine's split body
      }
      c->close();
    }
    const auto deadline = now + options.pool_wait_timeout;
    while (slot.active >= options.max_connections_per_host) {
      if (clock_type::now() >= deadline) {
        ec = errc::pool_exhausted;
        co_return nullptr;
      }
      auto t = std::make_shared<asio::steady_timer>(executor);
      t->expires_at(deadline);
      slot.waiters.push_back(t);
      error_code ignored;
      co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      if (stopping) {
        ec = errc::shutting_down;
        co_return nullptr;
      }
      // An idle connection may have come back while we waited.
      if (!slot.idle.empty()) {
        auto c = std::move(slot.idle.back());
        slot.idle.pop_back();
        if (c->looks_alive()) {
          ++slot.active;
          reused = true;
          co_return in_use(std::move(c));
        }
        c->close();
      }
    }
    ++slot.active;
    reused = false;
    auto c = std::make_unique<connection>(executor, o, key);
    co_await connect(*c, tls, ec);
    if (!ec && stopping) ec = errc::shutting_down;
    if (ec) {
      --slot.active;
      wake_one(slot);
      co_return nullptr;
    }
    co_return in_use(std::move(c));
  }

  asio::awaitable<void> connect(connection& c, ssl::context& tls, error_code& ec) {
    // Named: GCC 12 destroys temporaries in a co_await expression twice.
    const std::string verify_name = direct_tls && &tls == direct_tls.get() ? direct_name : std::string();
    co_await c.t.connect(c.org.host, c.org.port, c.org.tls() ? tls.native_handle() : nullptr, options.connect_timeout,
                         ec, c.org.public_only, verify_name);
  }
};

namespace {

using response_parser = http::response_parser<http::buffer_body>;

// The common part of a body read from a pooled connection: gives the connection
// back to the pool once the body is complete, counts bytes.
class pooled_body : public core::body_source {
 public:
  pooled_body(client::impl& pool, std::unique_ptr<connection> conn, std::string registry, bool keep_alive,
              std::chrono::milliseconds read_timeout)
      : pool_(pool),
        conn_(std::move(conn)),
        registry_(std::move(registry)),
        keep_alive_(keep_alive),
        read_timeout_(read_timeout) {}
  ~pooled_body() override { finish(false); }

 protected:
  void finish(bool reusable) {
    if (!conn_) return;
    if (received_ > 0) pool_.metrics.upstream_bytes(registry_, received_);
    received_ = 0;
    conn_->t.clear_deadline();
    pool_.release(std::move(conn_), reusable && keep_alive_);
  }
  void fail(error_code& ec) {
    pool_.metrics.upstream_error(registry_, ec == errc::timeout ? "body_stall" : "body_broken");
    if (ec == asio::error::eof) ec = errc::connection_lost;  // the body ended early
    finish(false);
  }

  client::impl& pool_;
  std::unique_ptr<connection> conn_;
  std::string registry_;
  bool keep_alive_;
  std::chrono::milliseconds read_timeout_;  // the longest gap between body bytes
  std::uint64_t received_ = 0;
};

// A Content-Length body: read straight into the caller's buffer, no parser, no copy.
class sized_body final : public pooled_body {
 public:
  sized_body(client::impl& pool, std::unique_ptr<connection> conn, std::string registry, bool keep_alive,
             std::chrono::milliseconds read_timeout, std::uint64_t size)
      : pooled_body(pool, std::move(conn), std::move(registry), keep_alive, read_timeout),
        size_(size),
        remaining_(size) {}

  std::optional<std::uint64_t> size() const override { return size_; }

  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    ec = {};
    if (!conn_) co_return 0;
    if (remaining_ == 0) {
      finish(true);
      co_return 0;
    }
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), remaining_));
    std::size_t n = 0;
    if (conn_->buffer.size() > 0) {
      n = asio::buffer_copy(asio::buffer(buf.data(), want), conn_->buffer.data());
      conn_->buffer.consume(n);
    } else {
      conn_->t.set_deadline(read_timeout_);
      n = co_await conn_->t.read_some(asio::buffer(buf.data(), want), ec);
      if (ec || n == 0) {
        if (!ec) ec = errc::connection_lost;
        fail(ec);
        co_return 0;
      }
    }
    remaining_ -= n;
    received_ += n;
    if (remaining_ == 0) finish(true);
    co_return n;
  }

 private:
  std::uint64_t size_;
  std::uint64_t remaining_;
};

// A chunked or close-delimited body, decoded by Beast's parser into the caller's buffer.
class parsed_body final : public pooled_body {
 public:
  parsed_body(client::impl& pool, std::unique_ptr<connection> conn, std::string registry,
              std::chrono::milliseconds read_timeout, std::unique_ptr<response_parser> parser)
      : pooled_body(pool, std::move(conn), std::move(registry), parser->keep_alive(), read_timeout),
        parser_(std::move(parser)) {}

  std::optional<std::uint64_t> size() const override { return std::nullopt; }

  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    ec = {};
    while (conn_) {
      if (parser_->is_done()) {
        finish(true);
        co_return 0;
      }
      auto& body = parser_->get().body();
      body.data = buf.data();
      body.size = buf.size();
      if (conn_->buffer.size() > 0) {
        const auto used = parser_->put(conn_->buffer.data(), ec);
        conn_->buffer.consume(used);
        if (ec == http::error::need_buffer || ec == http::error::need_more) ec = {};
        if (ec) {
          ec = errc::protocol_error;
          fail(ec);
          co_return 0;
        }
        const std::size_t produced = buf.size() - body.size;
        if (parser_->is_done()) finish(true);
        if (produced > 0) {
          received_ += produced;
          co_return produced;
        }
        if (used > 0 || !conn_) continue;  // (finished: the loop ends)
      }
      conn_->t.set_deadline(read_timeout_);
      const auto n = co_await conn_->t.read_some(conn_->buffer.prepare(64 * 1024), ec);
      if (ec == asio::error::eof) {
        parser_->put_eof(ec);  // ends a close-delimited body; an error for any other
        if (ec) {
          ec = errc::connection_lost;
          fail(ec);
          co_return 0;
        }
        continue;
      }
      if (ec) {
        fail(ec);
        co_return 0;
      }
      conn_->buffer.commit(n);
    }
    co_return 0;
  }

 private:
  std::unique_ptr<response_parser> parser_;
};

// One request/response exchange on a pooled connection, retried once on a new
// connection when a reused keep-alive connection turns out to be dead.
struct exchange_result {
  unsigned status = 0;
  core::headers headers;
  std::unique_ptr<core::body_source> body;
};

// `timeout` (nonzero) replaces the pool's response and body read timeouts.
asio::awaitable<exchange_result> exchange(client::impl& pool, ssl::context& tls, const origin& o,
                                          http::request<http::empty_body>& req, bool head,
                                          const std::string& registry_id, std::string_view kind, error_code& ec,
                                          std::chrono::milliseconds timeout = {}) {
  const auto response_timeout = timeout.count() > 0 ? timeout : pool.options.response_timeout;
  const auto read_timeout = timeout.count() > 0 ? timeout : pool.options.read_timeout;
  exchange_result out;
  std::ostringstream wire_stream;
  wire_stream << req;
  const std::string wire = wire_stream.str();
  for (int attempt = 0; attempt < 2; ++attempt) {
    ec = {};
    const auto started = clock_type::now();
    bool reused = false;
    auto conn = co_await pool.acquire(o, tls, reused, ec);
    if (ec) {
      pool.metrics.upstream_request(registry_id, kind, 0, clock_type::now() - started);
      pool.metrics.upstream_error(registry_id, ec == errc::pool_exhausted ? "pool_exhausted"
                                               : ec == errc::timeout      ? "connect_timeout"
                                               : ec == errc::tls_failed   ? "tls"
                                                                          : "connect");
      co_return out;
    }
    auto parser = std::make_unique<response_parser>();
    parser->body_limit(boost::none);
    parser->header_limit(64 * 1024);
    if (head) parser->skip(true);
    conn->t.set_deadline(response_timeout);
    co_await conn->t.write_all(asio::buffer(wire), ec);
    bool got_bytes = false;
    while (!ec && !parser->is_header_done()) {
      if (conn->buffer.size() > 0) {
        const auto used = parser->put(conn->buffer.data(), ec);
        conn->buffer.consume(used);
        if (ec == http::error::need_more) ec = {};
        if (ec) {
          ec = errc::protocol_error;
          break;
        }
        if (parser->is_header_done()) break;
      }
      const auto n = co_await conn->t.read_some(conn->buffer.prepare(64 * 1024), ec);
      if (!ec && n == 0) ec = asio::error::eof;
      if (!ec) {
        conn->buffer.commit(n);
        got_bytes = true;
      }
    }
    if (ec) {
      const bool stale = reused && !got_bytes && ec != errc::timeout;
      pool.release(std::move(conn), false);
      if (stale) continue;  // a dead keep-alive connection: try once more on a fresh one
      pool.metrics.upstream_request(registry_id, kind, 0, clock_type::now() - started);
      pool.metrics.upstream_error(registry_id, ec == errc::timeout ? "response_timeout" : "response");
      if (ec == asio::error::eof) ec = errc::connection_lost;
      co_return out;
    }
    auto& res = parser->get();
    out.status = res.result_int();
    pool.metrics.upstream_request(registry_id, kind, out.status, clock_type::now() - started);
    if (log::enabled(log::level::debug)) {
      // The path only: a redirect's query may be a presigned storage URL's signature.
      const std::string_view target = req.target();
      log::debug("upstream_response", {{"registry", registry_id},
                                       {"kind", kind},
                                       {"method", std::string_view(req.method_string())},
                                       {"host", o.host},
                                       {"path", target.substr(0, target.find('?'))},
                                       {"status", out.status},
                                       {"reused", reused}});
    }
    for (const auto& f : res) out.headers.add(std::string(f.name_string()), std::string(f.value()));
    if (head || parser->is_done()) {
      conn->t.clear_deadline();
      pool.release(std::move(conn), parser->keep_alive());
    } else if (const auto length = parser->content_length(); length && !parser->chunked()) {
      const bool keep = parser->keep_alive();
      out.body = std::make_unique<sized_body>(pool, std::move(conn), registry_id, keep, read_timeout, *length);
    } else {
      out.body = std::make_unique<parsed_body>(pool, std::move(conn), registry_id, read_timeout, std::move(parser));
    }
    co_return out;
  }
  co_return out;
}

http::request<http::empty_body> make_request(http::verb verb, const origin& o, const std::string& target) {
  http::request<http::empty_body> req{verb, target, 11};
  req.set(http::field::host, o.host_header());
  req.set(http::field::user_agent, "berth/0.1");
  // Never let a body arrive encoded: what is hashed must be what is served.
  req.set(http::field::accept_encoding, "identity");
  req.keep_alive(true);
  return req;
}

// Reads the rest of a small body and drops it, so the connection can be reused.
asio::awaitable<void> drain(std::unique_ptr<core::body_source>& body) {
  if (!body) co_return;
  std::string ignored;
  error_code ec;
  response r;
  r.body = std::move(body);
  co_await r.read_all(ignored, 64 * 1024, ec);
}

std::string token_key(const std::string& registry, const std::string& realm, const std::string& service,
                      const std::string& scope) {
  return registry + '\n' + realm + '\n' + service + '\n' + scope;
}

}  // namespace

asio::awaitable<void> response::read_all(std::string& out, std::size_t limit, error_code& ec) {
  ec = {};
  out.clear();
  if (!body) co_return;
  if (auto n = body->size(); n && *n > limit) {
    body.reset();
    ec = errc::body_too_large;
    co_return;
  }
  char buf[16384];
  while (true) {
    const auto n = co_await body->read(asio::buffer(buf), ec);
    if (ec) break;
    if (n == 0) break;
    if (out.size() + n > limit) {
      ec = errc::body_too_large;
      break;
    }
    out.append(buf, n);
  }
  body.reset();
}

client::client(asio::any_io_executor executor, pool_options options, metrics::registry& metrics)
    : impl_(std::make_unique<impl>(std::move(executor), options, metrics)) {}
client::~client() = default;
void client::shutdown() {
  asio::post(impl_->executor, [i = impl_.get()] { i->shutdown(); });
}

const asio::any_io_executor& client::executor() const {
  return impl_->executor;
}

namespace {

// GET realm?service=..&scope=.. with the robot's Basic credentials (Harbor's
// /service/token is GET-only).
asio::awaitable<token_result> fetch_token(client::impl& pool, registry::impl& reg, std::string realm,
                                          std::string service, std::string scope) {
  token_result result;
  std::string realm_target;
  auto realm_origin = parse_url(realm, &realm_target);
  if (!realm_origin) {
    result.error = "token realm is not an http(s) URL";
    reg.metrics.token_fetch(reg.options.id(), "bad_realm");
    co_return result;
  }
  boost::urls::url u = boost::urls::parse_uri_reference(realm_target).value();
  if (!service.empty()) u.params().append({"service", service});
  // Several scopes arrive space-separated; each becomes its own scope parameter.
  std::size_t start = 0;
  while (start <= scope.size() && !scope.empty()) {
    auto sp = scope.find(' ', start);
    auto one = scope.substr(start, sp == std::string::npos ? std::string::npos : sp - start);
    if (!one.empty()) u.params().append({"scope", one});
    if (sp == std::string::npos) break;
    start = sp + 1;
  }
  auto req = make_request(http::verb::get, *realm_origin, std::string(u.encoded_target()));
  req.set(http::field::accept, "application/json");
  if (reg.may_receive_credentials(*realm_origin)) {
    if (auto c = reg.creds.get()) {
      req.set(http::field::authorization, "Basic " + core::base64_encode(c->username + ":" + c->password));
    }
  } else {
    log::warn("token_realm_untrusted",
              {{"registry", reg.options.id()}, {"realm_host", realm_origin->host}, {"detail", "fetching anonymously"}});
  }
  error_code ec;
  auto ex = co_await exchange(pool, reg.tls, *realm_origin, req, false, reg.options.id(), "token", ec);
  if (ec) {
    result.error = "token service: " + ec.message();
    result.timed_out = ec == errc::timeout;
    reg.metrics.token_fetch(reg.options.id(), result.timed_out ? "timeout" : "unreachable");
    co_return result;
  }
  result.status = ex.status;
  std::string body;
  response r;
  r.body = std::move(ex.body);
  co_await r.read_all(body, 1024 * 1024, ec);
  result.timed_out = ec == errc::timeout;
  if (ex.status != 200 || ec) {
    result.error = "token service answered HTTP " + std::to_string(ex.status);
    reg.metrics.token_fetch(reg.options.id(), "http_" + metrics::status_label(ex.status));
    co_return result;
  }
  auto parsed = parse_token_response(body);
  parsed.status = result.status;
  result = std::move(parsed);
  if (!result.ok()) {
    reg.metrics.token_fetch(reg.options.id(), "invalid");
    co_return result;
  }
  reg.metrics.token_fetch(reg.options.id(), "ok");
  co_return result;
}

}  // namespace

asio::awaitable<response> fetcher::fetch_direct(const origin&, request, std::string, std::chrono::milliseconds,
                                                std::string, error_code& ec) {
  ec = errc::connect_failed;
  co_return response{};
}

void client::set_direct_tls(SSL_CTX* ctx, std::string verify_name) {
  SSL_CTX_up_ref(ctx);  // asio's context takes the reference it is given
  impl_->direct_tls = std::make_unique<ssl::context>(ctx);
  impl_->direct_name = std::move(verify_name);
}

asio::awaitable<response> client::fetch_direct(const origin& to, request req, std::string authorization,
                                               std::chrono::milliseconds timeout, std::string label, error_code& ec) {
  auto& pool = *impl_;
  if (to.tls() && !pool.direct_tls) {
    ec = errc::tls_failed;  // no peers.tls here: never TLS without this node's certificate
    co_return response{};
  }
  auto& tls = to.tls() ? *pool.direct_tls : pool.plain;
  const bool head = req.method == "HEAD";
  auto r = make_request(head ? http::verb::head : http::verb::get, to, req.target);
  if (!req.range.empty()) r.set(http::field::range, req.range);
  if (!authorization.empty()) r.set(http::field::authorization, authorization);
  auto ex = co_await exchange(pool, tls, to, r, head, label, "peer", ec, timeout);
  if (ec) co_return response{};
  co_return response{ex.status, std::move(ex.headers), std::move(ex.body)};
}

asio::awaitable<response> client::fetch(registry& registry, request req, error_code& ec) {
  auto& reg = registry.internals();
  auto& pool = *impl_;
  const bool head = req.method == "HEAD";
  const auto verb = head ? http::verb::head : http::verb::get;
  const std::string default_scope = "repository:" + req.repository + ":pull";

  origin current = reg.endpoint;
  std::string target = req.target;
  std::string authorization;  // what we send to the endpoint origin
  std::string sent_token_key;
  std::string sent_token;
  std::string fetched_key;  // a token fetched by this request, for this key

  // A token for `scope` from the cache or the token service, into authorization.
  // Anything but a token: the answer the client gets (a refusal passed on, or ec).
  const auto obtain_token = [&](std::string realm, std::string service,
                                std::string scope) -> asio::awaitable<std::optional<response>> {
    auto key = token_key(reg.options.id(), realm, service, scope);
    // Named, not a temporary: GCC 12 mis-destroys lambda temporaries inside a
    // co_await expression.
    token_cache::fetcher fetcher = [&pool, &reg, realm, service, scope]() {
      return fetch_token(pool, reg, realm, service, scope);
    };
    auto tok = co_await reg.tokens.get(key, std::move(fetcher));
    if (!tok.ok()) {
      log::warn("token_fetch_failed", {{"registry", reg.options.id()}, {"status", tok.status}, {"error", tok.error}});
      if (tok.status == 401 || tok.status == 403) {
        // The token service refused the robot: the client gets that answer.
        response denied;
        denied.status = tok.status;
        co_return denied;
      }
      ec = tok.timed_out ? errc::timeout : errc::token_failed;
      co_return response{};
    }
    fetched_key = key;
    sent_token_key = std::move(key);
    sent_token = tok.token;
    authorization = "Bearer " + tok.token;
    co_return std::nullopt;
  };

  // Start with what we already know about this registry's auth, so a request costs
  // one round trip when its token is cached, and a new repository's two (its token,
  // then the resource) rather than a 401 first.
  std::string realm;
  std::string service;
  {
    std::lock_guard lock(reg.mu);
    realm = reg.bearer_realm;
    service = reg.bearer_service;
    if (realm.empty() && reg.basic) {
      if (auto c = reg.creds.get()) {
        authorization = "Basic " + core::base64_encode(c->username + ":" + c->password);
      }
    }
  }
  if (!realm.empty()) {
    sent_token_key = token_key(reg.options.id(), realm, service, default_scope);
    sent_token = reg.tokens.peek(sent_token_key);
    if (!sent_token.empty()) {
      authorization = "Bearer " + sent_token;
    } else if (auto answer = co_await obtain_token(realm, service, default_scope)) {
      co_return std::move(*answer);
    }
  }

  int auth_rounds = 0;
  bool answered_challenge = false;
  std::size_t redirects = 0;
  while (true) {
    auto r = make_request(verb, current, target);
    if (!req.accept.empty()) r.set(http::field::accept, req.accept);
    if (!req.range.empty()) r.set(http::field::range, req.range);
    const bool at_endpoint = current == reg.endpoint;
    if (at_endpoint && !authorization.empty()) r.set(http::field::authorization, authorization);

    auto ex =
        co_await exchange(pool, reg.tls, current, r, head, reg.options.id(), at_endpoint ? "registry" : "redirect", ec);
    if (ec) co_return response{};

    // One answer to a challenge per request: a 401 right after a token fetched for
    // this request means the robot lacks access, and the client hears so.
    if (ex.status == 401 && at_endpoint && auth_rounds < 3 && !answered_challenge) {
      std::vector<std::string> values;
      for (const auto& f : ex.headers.fields()) {
        if (core::iequals(f.first, "WWW-Authenticate")) values.push_back(f.second);
      }
      auto ch = pick_challenge(values);
      if (!ch) co_return response{ex.status, std::move(ex.headers), std::move(ex.body)};
      if (ch->scheme == "bearer") {
        const auto challenge_realm = ch->param("realm");
        const auto challenge_service = ch->param("service");
        auto scope = ch->param("scope");
        if (scope.empty()) scope = default_scope;
        {
          std::lock_guard lock(reg.mu);
          reg.bearer_realm = challenge_realm;
          reg.bearer_service = challenge_service;
        }
        const auto key = token_key(reg.options.id(), challenge_realm, challenge_service, scope);
        // A token fetched by this very request for this scope was refused: the robot
        // lacks access (a second token would say the same).
        if (key == fetched_key) co_return response{ex.status, std::move(ex.headers), std::move(ex.body)};
        // The token we sent for this very scope was refused (expired or revoked):
        // never hand it out again. A 401 for another scope (a redirect to another
        // repository) says nothing about it.
        if (!sent_token.empty() && key == sent_token_key) reg.tokens.invalidate(sent_token_key, sent_token);
        co_await drain(ex.body);
        if (auto answer = co_await obtain_token(challenge_realm, challenge_service, scope)) {
          co_return std::move(*answer);
        }
        answered_challenge = true;
        ++auth_rounds;
        continue;
      }
      if (ch->scheme == "basic") {
        auto c = reg.creds.get();
        if (!c || authorization.rfind("Basic ", 0) == 0) {
          co_return response{ex.status, std::move(ex.headers), std::move(ex.body)};
        }
        {
          std::lock_guard lock(reg.mu);
          reg.basic = true;
        }
        co_await drain(ex.body);
        authorization = "Basic " + core::base64_encode(c->username + ":" + c->password);
        sent_token.clear();
        answered_challenge = true;
        ++auth_rounds;
        continue;
      }
      co_return response{ex.status, std::move(ex.headers), std::move(ex.body)};
    }

    const bool redirect =
        ex.status == 301 || ex.status == 302 || ex.status == 303 || ex.status == 307 || ex.status == 308;
    if (redirect) {
      const auto location = ex.headers.get("Location");
      co_await drain(ex.body);
      if (++redirects > pool.options.max_redirects) {
        ec = errc::too_many_redirects;
        co_return response{};
      }
      if (!location) {
        ec = errc::bad_redirect;
        co_return response{};
      }
      // Resolve relative to the current URL. The new URL is followed, never cached.
      const std::string current_url = current.str() + target;  // the view below points into it
      auto base = boost::urls::parse_uri(current_url);
      auto ref = boost::urls::parse_uri_reference(*location);
      if (!base || !ref) {
        ec = errc::bad_redirect;
        co_return response{};
      }
      boost::urls::url resolved;
      if (!boost::urls::resolve(*base, *ref, resolved)) {
        ec = errc::bad_redirect;
        co_return response{};
      }
      std::string next_target;
      auto next = parse_url(std::string(resolved.buffer()), &next_target);
      if (!next) {
        ec = errc::bad_redirect;
        co_return response{};
      }
      if (!reg.may_redirect_to(*next)) {
        log::warn("upstream_redirect_refused", {{"registry", reg.options.id()},
                                                {"to_host", next->host},
                                                {"detail", "not in registries[].redirect_hosts"}});
        ec = errc::redirect_refused;
        co_return response{};
      }
      log::debug("upstream_redirect", {{"registry", reg.options.id()}, {"status", ex.status}, {"to_host", next->host}});
      current = *next;
      target = std::move(next_target);
      answered_challenge = false;  // a new resource may need a new scope (Harbor's 301 to library/)
      continue;                    // Authorization is only ever attached at the endpoint origin
    }

    co_return response{ex.status, std::move(ex.headers), std::move(ex.body)};
  }
}

}  // namespace berth::upstream
