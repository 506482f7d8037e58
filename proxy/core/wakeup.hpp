#pragma once
// Parking a coroutine until another thread says "something changed". The waiter
// registers a timer while holding the owner's mutex, then awaits it; the notifier
// posts a cancel to each timer's own executor. Because the cancel runs on the
// waiter's (single-threaded) executor, it cannot run before the wait has started:
// no lost wake-ups. A deadline bounds every wait.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <memory>
#include <vector>

namespace berth::core {

class wakeup_list {
 public:
  // REQUIRES: the owner's mutex is held. Returns the timer to await (see wait()).
  std::shared_ptr<boost::asio::steady_timer> park(const boost::asio::any_io_executor& executor,
                                                  std::chrono::steady_clock::duration limit) {
    auto t = std::make_shared<boost::asio::steady_timer>(executor);
    t->expires_after(limit);
    timers_.push_back(t);
    return t;
  }

  // REQUIRES: the owner's mutex is held. Returns the timers to wake() after unlocking.
  std::vector<std::shared_ptr<boost::asio::steady_timer>> take() { return std::move(timers_); }

  // REQUIRES: the owner's mutex is held. Call after wait() returns: drops `t` if it
  // is still parked (its limit passed), so that no one later touches a timer whose
  // executor may be gone by then.
  void forget(const std::shared_ptr<boost::asio::steady_timer>& t) { std::erase(timers_, t); }

  static void wake(const std::vector<std::shared_ptr<boost::asio::steady_timer>>& timers) {
    for (const auto& t : timers) boost::asio::post(t->get_executor(), [t] { t->cancel(); });
  }

  // Awaits a parked timer: returns when woken or when its limit passes.
  static boost::asio::awaitable<void> wait(const std::shared_ptr<boost::asio::steady_timer>& t) {
    boost::system::error_code ignored;
    co_await t->async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ignored));
  }

 private:
  std::vector<std::shared_ptr<boost::asio::steady_timer>> timers_;
};

}  // namespace berth::core
