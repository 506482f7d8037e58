#include "mirror/fill_driver.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "core/chunk_hash.hpp"
#include "core/log.hpp"
#include "core/min_rate_body.hpp"
#include "metrics/metrics.hpp"
#include "mirror/blob_source.hpp"
#include "store/blob_store.hpp"

namespace berth::mirror {

namespace asio = boost::asio;

namespace {

constexpr std::size_t k_read = 256 * 1024;
// Sources dropped for wrong chunks in one fill before it gives up (each one is a
// distrusted node; the upstream vouches for nothing, so this is a guard, not a plan).
constexpr int k_max_wrong_chunks = 8;

class fill_run {
 public:
  fill_run(std::shared_ptr<store::fill> f, std::shared_ptr<blob_source> source, std::string confirmed_for,
           metrics::registry& metrics, const mirror_options& options)
      : f_(std::move(f)),
        source_(std::move(source)),
        confirmed_for_(std::move(confirmed_for)),
        metrics_(metrics),
        options_(options) {}

  asio::awaitable<void> run() {
    auto first = co_await source_->fetch();
    if (first.refusal) {
      f_->fail(store::fill_failure::upstream_answer, std::make_shared<const core::reply>(std::move(*first.refusal)));
      co_return;
    }
    size_ = first.size;
    if (!f_->start(first.size, std::move(first.media_type), std::move(confirmed_for_))) co_return;
    std::unique_ptr<core::body_source> body = first.body ? slow_guard(std::move(first.body)) : nullptr;
    bool ended = body == nullptr;  // an empty blob has no body to read
    std::unique_ptr<char[]> buf(new char[k_read]);
    while (body) {
      // Bytes from a source that vouches for them are held until their chunk is
      // checked; its reads stop at the chunk's end.
      const bool hold = f_->held() > 0 || source_->vouches();
      const auto want = hold ? std::min<std::uint64_t>(k_read, f_->room_in_chunk()) : k_read;
      boost::system::error_code ec;
      const auto n = co_await body->read(asio::buffer(buf.get(), static_cast<std::size_t>(want)), ec);
      if (!ec && n == 0) {
        if (f_->held() == 0 || co_await held_bytes_check_out(true)) {
          ended = true;
          break;
        }
        body.reset();  // its connection (and the peer's upload place) goes now
        body = co_await elsewhere();
        continue;
      }
      if (!ec) {
        if (!f_->append(buf.get(), n, hold)) co_return;
        if (f_->held() > 0 && f_->room_in_chunk() == core::k_chunk_bytes && !co_await held_bytes_check_out(false)) {
          body.reset();
          body = co_await elsewhere();
        }
        continue;
      }
      // What is held came from this source alone: it is asked for again.
      f_->drop_held();
      body.reset();
      log::warn("cache_fill_broken", {{"source", source_->name()},
                                      {"digest", f_->digest()},
                                      {"received", f_->written()},
                                      {"size", size_ ? std::to_string(*size_) : std::string("unknown")},
                                      {"error", ec.message()},
                                      {"resumes", resumes_}});
      body = co_await resume();
    }
    if (!ended) {
      f_->fail(store::fill_failure::upstream_broken);
      co_return;
    }
    if (f_->finish() == store::fill_failure::digest_mismatch) source_->rejected();
  }

 private:
  // A trickling source is treated like a stalled one: resume from a fresh connection.
  std::unique_ptr<core::body_source> slow_guard(std::unique_ptr<core::body_source> b) const {
    return std::make_unique<core::min_rate_body>(std::move(b), options_.min_rate, options_.min_rate_period);
  }

  // Checks the held bytes: released when their chunk matches the source's hash, or
  // at the body's end when the blob verifies; dropped (and the source told) when the
  // hash does not match, or when the blob does not verify and the held bytes are all
  // of it (a blob of one chunk, which no peer keeps a list for). Where the source has
  // no hash and the held bytes are not all of the blob, they are released unchecked
  // and the digest decides at the end.
  asio::awaitable<bool> held_bytes_check_out(bool at_end) {
    const auto index = f_->held_chunk();
    if (at_end && f_->verifies()) {
      metrics_.peer_chunk_check("match");
      f_->confirm_held();
      co_return true;
    }
    const auto expected = co_await source_->chunk_hash(index);
    const bool wrong = expected ? *expected != f_->held_digest() : at_end && f_->held() == f_->written();
    if (!wrong) {
      metrics_.peer_chunk_check(expected ? "match" : "unchecked");
      f_->confirm_held();
      co_return true;
    }
    metrics_.peer_chunk_check("mismatch");
    // Held from inside the chunk, after bytes released unchecked: the mismatch may be
    // theirs. The held bytes are dropped all the same, but their sender is not blamed.
    const bool proven = f_->held_from() % core::k_chunk_bytes == 0;
    log::error("chunk_mismatch", {{"source", source_->name()},
                                  {"digest", f_->digest()},
                                  {"chunk", index},
                                  {"from", f_->held_from()},
                                  {"expected", expected ? core::to_hex(*expected) : std::string("the blob's digest")},
                                  {"got", core::to_hex(f_->held_digest())},
                                  {"sender_at_fault", proven}});
    f_->drop_held();
    if (proven) {
      source_->wrong_chunk(index);
    } else {
      source_->passed_over(index);
    }
    co_return false;
  }

  // After wrong bytes: the rest from where the holding began, from another source at
  // once (then as after a broken body).
  asio::awaitable<std::unique_ptr<core::body_source>> elsewhere() {
    if (++wrong_chunks_ <= k_max_wrong_chunks) {
      if (auto rest = co_await continue_body()) co_return rest;
    }
    co_return co_await resume();
  }

  // The rest of the body from the byte the fill reached, a few times with backoff;
  // null when no source would.
  asio::awaitable<std::unique_ptr<core::body_source>> resume() {
    while (resumes_ < options_.resume_backoff.size()) {
      asio::steady_timer pause(co_await asio::this_coro::executor, options_.resume_backoff[resumes_++]);
      boost::system::error_code ec;
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (auto rest = co_await continue_body()) co_return rest;
    }
    co_return nullptr;
  }

  // One ask for the rest of the body from the byte the fill reached; null if refused.
  asio::awaitable<std::unique_ptr<core::body_source>> continue_body() {
    std::string problem;
    if (auto rest = co_await source_->fetch_range(f_->written(), std::nullopt, problem)) {
      metrics_.cache_resume("ok");
      co_return slow_guard(std::move(rest));
    }
    metrics_.cache_resume("failed");
    log::warn("cache_resume_failed", {{"source", source_->name()}, {"digest", f_->digest()}, {"error", problem}});
    co_return nullptr;
  }

  std::shared_ptr<store::fill> f_;
  std::shared_ptr<blob_source> source_;
  std::string confirmed_for_;
  metrics::registry& metrics_;
  const mirror_options& options_;
  std::optional<std::uint64_t> size_;
  std::size_t resumes_ = 0;
  int wrong_chunks_ = 0;
};

}  // namespace

asio::awaitable<void> run_fill(std::shared_ptr<store::fill> f, std::shared_ptr<blob_source> source,
                               std::string confirmed_for, metrics::registry& metrics, const mirror_options& options) {
  try {
    fill_run run(f, std::move(source), std::move(confirmed_for), metrics, options);
    co_await run.run();
  } catch (const std::exception& e) {
    // As core::spawn's handler would (logged and counted alike), but here the fill's
    // followers are told at once and the exception goes no further.
    log::error("task_exception", {{"task", "fill"}, {"digest", f->digest()}, {"error", e.what()}});
    metrics.task_exception("fill");
    f->fail(store::fill_failure::upstream_broken);
  }
}

}  // namespace berth::mirror
