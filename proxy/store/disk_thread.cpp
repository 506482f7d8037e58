#include "store/disk_thread.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <future>
#include <optional>
#include <thread>

#include "core/log.hpp"
#include "metrics/metrics.hpp"

namespace berth::store {

namespace asio = boost::asio;

struct disk_thread::impl {
  explicit impl(metrics::registry& m) : metrics(m) {}
  metrics::registry& metrics;
  asio::io_context ctx{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard{ctx.get_executor()};
  std::thread thread;

  void guarded(const std::function<void()>& task) {
    try {
      task();
    } catch (const std::exception& e) {
      log::error("task_exception", {{"task", "store_disk"}, {"error", e.what()}});
      metrics.task_exception("store_disk");
    }
  }
};

namespace {
asio::awaitable<void> call(std::function<void()> task) {
  task();
  co_return;
}
}  // namespace

disk_thread::disk_thread(metrics::registry& metrics) : impl_(std::make_unique<impl>(metrics)) {
  impl_->thread = std::thread([i = impl_.get()] { i->ctx.run(); });
}

disk_thread::~disk_thread() {
  impl_->guard.reset();  // run() returns once the queue is empty
  if (impl_->thread.joinable()) impl_->thread.join();
}

void disk_thread::post(std::function<void()> task) {
  asio::post(impl_->ctx, [i = impl_.get(), task = std::move(task)] { i->guarded(task); });
}

asio::awaitable<void> disk_thread::run(std::function<void()> task) {
  co_await asio::co_spawn(impl_->ctx, call(std::move(task)), asio::use_awaitable);
}

void disk_thread::flush() {
  if (in_this_thread()) return;
  // Tasks do their follow-up work inline (a publish evicts for room right there), so
  // one marker behind them is enough.
  std::promise<void> done;
  asio::post(impl_->ctx, [&done] { done.set_value(); });
  done.get_future().wait();
}

bool disk_thread::in_this_thread() const {
  return impl_->ctx.get_executor().running_in_this_thread();
}

}  // namespace berth::store
