#pragma once
// Starting a coroutine nobody awaits. Boost 1.81's `detached` drops an exception
// that escapes one without a word; here it reaches `failed` (log it and count it
// there), so a broken session or fill is never silent.
#include <boost/asio/co_spawn.hpp>
#include <exception>
#include <string_view>
#include <utility>

namespace berth::core {

template <class Executor, class Task, class OnFailure>
void spawn(Executor&& ex, Task&& task, OnFailure failed) {
  boost::asio::co_spawn(std::forward<Executor>(ex), std::forward<Task>(task),
                        [failed = std::move(failed)](const std::exception_ptr& e) {
                          if (!e) return;
                          try {
                            std::rethrow_exception(e);
                          } catch (const std::exception& x) {
                            failed(std::string_view(x.what()));
                          } catch (...) {
                            failed(std::string_view("an exception that is not a std::exception"));
                          }
                        });
}

}  // namespace berth::core
