#include "mirror/fill_driver.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "core/log.hpp"
#include "core/min_rate_body.hpp"
#include "metrics/metrics.hpp"
#include "mirror/blob_source.hpp"
#include "store/blob_store.hpp"

namespace berth::mirror {

namespace asio = boost::asio;

namespace {
constexpr std::size_t k_chunk = 256 * 1024;
}  // namespace

asio::awaitable<void> run_fill(std::shared_ptr<store::fill> f, std::shared_ptr<blob_source> source,
                               std::string confirmed_for, metrics::registry& metrics, const mirror_options& options) {
  try {
    auto first = co_await source->fetch();
    if (first.refusal) {
      f->fail(store::fill_failure::upstream_answer, std::make_shared<const core::reply>(std::move(*first.refusal)));
      co_return;
    }
    if (!f->start(first.size, std::move(first.media_type), std::move(confirmed_for))) co_return;
    // A trickling source is treated like a stalled one: resume from a fresh connection.
    auto slow_guard = [&options](std::unique_ptr<core::body_source> b) -> std::unique_ptr<core::body_source> {
      return std::make_unique<core::min_rate_body>(std::move(b), options.min_rate, options.min_rate_period);
    };
    std::unique_ptr<core::body_source> body = first.body ? slow_guard(std::move(first.body)) : nullptr;
    std::unique_ptr<char[]> buf(new char[k_chunk]);
    std::size_t resumes = 0;
    while (body) {
      boost::system::error_code ec;
      const auto n = co_await body->read(asio::buffer(buf.get(), k_chunk), ec);
      if (!ec && n == 0) break;
      if (!ec) {
        if (!f->append(buf.get(), n)) co_return;
        continue;
      }
      const auto have = f->written();
      log::warn("cache_fill_broken", {{"source", source->name()},
                                      {"digest", f->digest()},
                                      {"received", have},
                                      {"size", first.size ? std::to_string(*first.size) : std::string("unknown")},
                                      {"error", ec.message()},
                                      {"resumes", resumes}});
      body.reset();
      while (!body && resumes < options.resume_backoff.size()) {
        asio::steady_timer pause(co_await asio::this_coro::executor, options.resume_backoff[resumes++]);
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        std::string problem;
        if (auto rest = co_await source->fetch_range(have, std::nullopt, problem)) {
          body = slow_guard(std::move(rest));
          metrics.cache_resume("ok");
        } else {
          metrics.cache_resume("failed");
          log::warn("cache_resume_failed", {{"source", source->name()}, {"digest", f->digest()}, {"error", problem}});
        }
      }
      if (!body) {
        f->fail(store::fill_failure::upstream_broken);
        co_return;
      }
    }
    if (f->finish() == store::fill_failure::digest_mismatch) source->rejected();
  } catch (const std::exception& e) {
    // As core::spawn's handler would (logged and counted alike), but here the fill's
    // followers are told at once and the exception goes no further.
    log::error("task_exception", {{"task", "fill"}, {"digest", f->digest()}, {"error", e.what()}});
    metrics.task_exception("fill");
    f->fail(store::fill_failure::upstream_broken);
  }
}

}  // namespace berth::mirror
