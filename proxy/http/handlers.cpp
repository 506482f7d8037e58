#include "http/handlers.hpp"

#include "http/router.hpp"
#include "metrics/metrics.hpp"
#include "mirror/mirror.hpp"

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
    h.reply = co_await m.serve(req);
  }
  // OCI distribution spec (proxying): a proxy scoping by ns echoes it.
  if (!routed.ns.empty()) h.reply.headers.set("OCI-Namespace", routed.ns);
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

asio::awaitable<handled> serve_admin(metrics::registry& metrics, const std::atomic<bool>& ready, incoming in) {
  const auto q = in.target.find('?');
  const std::string path = in.target.substr(0, q);
  if (in.method != "GET" && in.method != "HEAD") co_return text(405, "method not allowed\n", "admin");
  if (path == "/metrics") {
    auto h = text(200, metrics.serialize(), "metrics");
    h.reply.headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    co_return h;
  }
  if (path == "/healthz") co_return text(200, "ok\n", "healthz");
  if (path == "/readyz") co_return ready ? text(200, "ready\n", "readyz") : text(503, "not ready\n", "readyz");
  co_return text(404, "not found\n", "admin");
}

}  // namespace

handler make_pull_handler(std::vector<mirror::mirror*> mirrors) {
  return [mirrors = std::move(mirrors)](const incoming& in) { return serve_pull(*mirrors.at(in.worker), in); };
}

handler make_admin_handler(metrics::registry& metrics, const std::atomic<bool>& ready) {
  return [&metrics, &ready](const incoming& in) { return serve_admin(metrics, ready, in); };
}

}  // namespace berth::http
