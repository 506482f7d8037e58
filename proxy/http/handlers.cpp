#include "http/handlers.hpp"

#include <boost/url/parse.hpp>

#include "core/files.hpp"
#include "core/log.hpp"
#include "http/router.hpp"
#include "meta/cache.hpp"
#include "metrics/metrics.hpp"
#include "mirror/mirror.hpp"
#include "mirror/webhook.hpp"

namespace berth::http {

namespace asio = boost::asio;

namespace {

asio::awaitable<handled> serve_pull(mirror::mirror& m, incoming in) {
  auto routed = route(in.method, in.target);
  handled h;
  h.route = routed.route;
  h.ns = routed.ns;
  if (!routed.ok()) {
    h.reply = core::error_reply(routed.error());
  } else {
    auto req = routed.request();
    req.accept = std::move(in.accept);
    req.range = std::move(in.range);
    req.if_none_match = std::move(in.if_none_match);
    h.reply = co_await m.serve(req);
  }
  // OCI distribution spec (proxying): a proxy scoping by ns echoes it. A registry
  // name is a host and port; anything longer is not echoed (nor is it served).
  if (!routed.ns.empty() && routed.ns.size() <= 255) h.reply.headers.set("OCI-Namespace", routed.ns);
  co_return h;
}

handled text(unsigned status, std::string body, std::string route) {
  handled h;
  h.route = std::move(route);
  h.reply.status = status;
  h.reply.headers.add("Content-Type", "text/plain; charset=utf-8");
  h.reply.body = std::move(body);
  return h;
}

handled json_reply(unsigned status, std::string body, std::string route) {
  auto h = text(status, std::move(body) + "\n", std::move(route));
  h.reply.headers.set("Content-Type", "application/json");
  return h;
}

// POST /webhooks/harbor[?registry=<name>]: Harbor says an artifact changed; every
// node forgets what it knew about its tags and digest.
// The webhook's checks that need no body (method, switched on, secret): run before
// the body is read, so nobody without the secret can make Berth hold one.
std::optional<handled> webhook_refusal(metrics::registry& metrics, const webhook_target& target, const incoming& in) {
  const std::string route = "webhook";
  if (in.method != "POST") return text(405, "POST only\n", route);
  if (target.cache == nullptr || target.secret_file.empty()) {
    metrics.meta_webhook("disabled");
    return text(404, "the webhook is off: set metadata.webhook_secret_file\n", route);
  }
  std::string secret;
  if (!core::read_file(target.secret_file, secret) || (secret = core::trim_newlines(secret)).empty()) {
    log::error("webhook_secret_unreadable", {{"file", target.secret_file}});
    metrics.meta_webhook("disabled");
    return text(503, "the webhook secret file cannot be read\n", route);
  }
  if (!mirror::webhook_authorized(in.authorization, secret)) {
    log::warn("webhook_unauthorized", {{"has_authorization", !in.authorization.empty()}});
    metrics.meta_webhook("unauthorized");
    return text(401, "the Authorization header does not carry the webhook secret\n", route);
  }
  return std::nullopt;
}

asio::awaitable<handled> serve_webhook(metrics::registry& metrics, const webhook_target& target, const incoming& in) {
  const std::string route = "webhook";
  if (auto refused = webhook_refusal(metrics, target, in)) co_return std::move(*refused);
  std::string hint;
  if (auto u = boost::urls::parse_origin_form(in.target)) {
    if (auto it = u->params().find("registry"); it != u->params().end()) hint = (*it).value;
  }
  std::string error;
  auto event = mirror::parse_harbor_event(in.body, *target.table, hint, error);
  if (!event) {
    log::warn("webhook_rejected", {{"error", error}});
    metrics.meta_webhook("bad_request");
    co_return text(400, error + "\n", route);
  }
  if (event->groups.empty()) {
    metrics.meta_webhook("ignored");
    co_return json_reply(200, R"({"invalidated":0})", route);
  }
  const auto groups = event->groups;
  const bool told = co_await target.cache->invalidate(groups);
  log::info("webhook_invalidation", {{"event", event->event},
                                     {"registry", event->registry},
                                     {"repository", event->repository},
                                     {"entries", static_cast<unsigned>(groups.size())},
                                     {"cluster_wide", told}});
  metrics.meta_webhook("invalidated");
  co_return json_reply(
      200,
      R"({"invalidated":)" + std::to_string(groups.size()) + R"(,"cluster_wide":)" + (told ? "true" : "false") + "}",
      route);
}

asio::awaitable<handled> serve_admin(metrics::registry& metrics, const admin_state& state,
                                     const webhook_target& webhook, incoming in) {
  const auto q = in.target.find('?');
  const std::string path = in.target.substr(0, q);
  if (path == "/webhooks/harbor") {
    co_return co_await serve_webhook(metrics, webhook, in);
  }
  if (path == "/debug/block" && state.block_loop && in.method == "POST") {
    std::size_t loop = 0;
    long long ms = 0;
    if (auto u = boost::urls::parse_origin_form(in.target)) {
      for (const auto& p : u->params()) {
        if (p.key == "loop") loop = std::strtoull(p.value.c_str(), nullptr, 10);
        if (p.key == "ms") ms = std::strtoll(p.value.c_str(), nullptr, 10);
      }
    }
    if (ms <= 0 || !state.block_loop(loop, std::chrono::milliseconds(ms)))
      co_return text(400, "needs loop=<worker index> and ms=<positive>\n", "admin");
    co_return text(200, "blocking\n", "admin");
  }
  if (in.method != "GET" && in.method != "HEAD") co_return text(405, "method not allowed\n", "admin");
  if (path == "/metrics") {
    auto h = text(200, metrics.serialize(), "metrics");
    h.reply.headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    co_return h;
  }
  if (path == "/healthz") {
    if (state.live && !state.live()) co_return text(503, "a worker's event loop is stuck\n", "healthz");
    co_return text(200, "ok\n", "healthz");
  }
  if (path == "/readyz") {
    const bool ready = state.ready == nullptr || state.ready->load();
    co_return ready ? text(200, "ready\n", "readyz") : text(503, "not ready\n", "readyz");
  }
  co_return text(404, "not found\n", "admin");
}

}  // namespace

handler make_pull_handler(std::vector<mirror::mirror*> mirrors) {
  return [mirrors = std::move(mirrors)](const incoming& in) { return serve_pull(*mirrors.at(in.worker), in); };
}

handler make_admin_handler(metrics::registry& metrics, admin_state state, webhook_target webhook) {
  return [&metrics, state = std::move(state), webhook = std::move(webhook)](const incoming& in) {
    return serve_admin(metrics, state, webhook, in);
  };
}

body_gate make_admin_gate(metrics::registry& metrics, webhook_target webhook) {
  return [&metrics, webhook = std::move(webhook)](const incoming& in) -> std::optional<handled> {
    if (in.target.substr(0, in.target.find('?')) == "/webhooks/harbor") return webhook_refusal(metrics, webhook, in);
    return text(413, "the admin port reads a request body only for POST /webhooks/harbor\n", "admin");
  };
}

}  // namespace berth::http
