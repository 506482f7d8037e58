// A closed-loop HTTP/1.1 load generator for HEAD requests, which wrk 4.1 cannot
// measure (its parser waits for the body a HEAD response's Content-Length
// announces). N keep-alive connections, each sending the next request when the
// last answer is in; prints one JSON line: requests/s, latency percentiles, errors.
//
//   berth_loadgen --url http://127.0.0.1:5050/v2/x/manifests/v1 --method HEAD
//                 --connections 64 --threads 2 --seconds 8 --header "Accept: ..."
#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace http = boost::beast::http;
using clock_type = std::chrono::steady_clock;

namespace {

struct worker_result {
  std::vector<double> latencies_us;
  std::uint64_t errors = 0;
};

asio::awaitable<void> connection(asio::ip::tcp::endpoint ep, const http::request<http::empty_body>& req,
                                 clock_type::time_point until, worker_result& out) {
  asio::ip::tcp::socket sock(co_await asio::this_coro::executor);
  boost::system::error_code ec;
  co_await sock.async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    ++out.errors;
    co_return;
  }
  sock.set_option(asio::ip::tcp::no_delay(true));
  boost::beast::flat_buffer buffer;
  const bool head = req.method() == http::verb::head;
  while (clock_type::now() < until) {
    const auto t0 = clock_type::now();
    co_await http::async_write(sock, req, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    parser.skip(head);  // a HEAD answer has no body, whatever Content-Length says
    co_await http::async_read(sock, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    const auto status = parser.get().result_int();
    if (status >= 400) ++out.errors;
    out.latencies_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  if (ec) ++out.errors;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"closed-loop HTTP/1.1 load generator"};
  std::string url, method = "HEAD";
  std::vector<std::string> headers;
  int connections = 64, threads = 2;
  double seconds = 8;
  app.add_option("--url", url)->required();
  app.add_option("--method", method);
  app.add_option("--header", headers);
  app.add_option("--connections", connections);
  app.add_option("--threads", threads);
  app.add_option("--seconds", seconds);
  CLI11_PARSE(app, argc, argv);

  auto u = boost::urls::parse_uri(url);
  if (!u || u->scheme() != "http") {
    std::cerr << "--url must be an http:// URL\n";
    return 2;
  }
  asio::io_context resolve_ctx;
  asio::ip::tcp::resolver resolver(resolve_ctx);
  const auto ep = *resolver.resolve(std::string(u->host()), u->has_port() ? std::string(u->port()) : "80").begin();

  http::request<http::empty_body> req{http::string_to_verb(method), std::string(u->encoded_target()), 11};
  req.set(http::field::host, std::string(u->encoded_host_and_port()));
  for (const auto& h : headers) {
    const auto colon = h.find(':');
    if (colon == std::string::npos) continue;
    auto value = h.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    req.set(h.substr(0, colon), value);
  }
  req.keep_alive(true);

  const auto until =
      clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
  std::vector<worker_result> results(static_cast<std::size_t>(connections));
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  for (int t = 0; t < threads; ++t) contexts.push_back(std::make_unique<asio::io_context>(1));
  const auto started = clock_type::now();
  for (int c = 0; c < connections; ++c) {
    auto& ctx = *contexts[static_cast<std::size_t>(c % threads)];
    asio::co_spawn(ctx, connection(ep.endpoint(), req, until, results[static_cast<std::size_t>(c)]), asio::detached);
  }
  std::vector<std::thread> pool;
  for (auto& ctx : contexts) pool.emplace_back([&ctx] { ctx->run(); });
  for (auto& t : pool) t.join();
  const double wall = std::chrono::duration<double>(clock_type::now() - started).count();

  std::vector<double> all;
  std::uint64_t errors = 0;
  for (auto& r : results) {
    all.insert(all.end(), r.latencies_us.begin(), r.latencies_us.end());
    errors += r.errors;
  }
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) {
    return all.empty() ? 0.0 : all[std::min(all.size() - 1, static_cast<std::size_t>(p * all.size()))] / 1000.0;
  };
  std::printf("{\"requests\":%zu,\"errors\":%llu,\"rps\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f}\n",
              all.size(), static_cast<unsigned long long>(errors), static_cast<double>(all.size()) / wall, pct(0.5),
              pct(0.99), pct(0.999));
  return errors == 0 ? 0 : 1;
}
