#include "core/spawn.hpp"

#include <gtest/gtest.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <stdexcept>
#include <string>

namespace asio = boost::asio;

namespace {
asio::awaitable<void> throws(bool really) {
  if (really) throw std::runtime_error("boom");
  co_return;
}
}  // namespace

TEST(Spawn, AnExceptionThatEscapesReachesTheHandlerNotTheEventLoop) {
  asio::io_context ctx;
  std::string got;
  int calls = 0;
  const auto failed = [&](std::string_view what) {
    got = std::string(what);
    ++calls;
  };
  berth::core::spawn(ctx, throws(true), failed);
  berth::core::spawn(ctx, throws(false), failed);
  EXPECT_NO_THROW(ctx.run()) << "detached would have dropped it; rethrowing from run() would end a worker";
  EXPECT_EQ(got, "boom");
  EXPECT_EQ(calls, 1) << "a coroutine that finishes calls nothing";
}
