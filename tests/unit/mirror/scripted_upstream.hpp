#pragma once
// A scripted upstream for mirror/ unit tests: every request the mirror sends is
// recorded, and a script decides the answer (status, headers, a body that may break
// off after some bytes, or no response at all). Bodies are read through the same
// body_source interface the real client hands out.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/body_source.hpp"
#include "upstream/client.hpp"

namespace berth::testing {

// Bytes from a string, in reads of at most `step`; after `cut_at` bytes (if set) the
// body breaks off with connection_lost, as a reset connection does.
class string_body final : public core::body_source {
 public:
  string_body(std::string bytes, std::optional<std::size_t> cut_at, bool sized, std::size_t step = 4096)
      : bytes_(std::move(bytes)), cut_at_(cut_at), sized_(sized), step_(step) {}
  boost::asio::awaitable<std::size_t> read(boost::asio::mutable_buffer buf, boost::system::error_code& ec) override {
    // Every read yields once, as a socket read does, so other coroutines interleave.
    co_await boost::asio::post(co_await boost::asio::this_coro::executor, boost::asio::use_awaitable);
    ec = {};
    const std::size_t end = cut_at_ ? std::min(*cut_at_, bytes_.size()) : bytes_.size();
    if (pos_ >= end) {
      if (cut_at_ && *cut_at_ < bytes_.size()) ec = upstream::errc::connection_lost;
      co_return 0;
    }
    const std::size_t n = std::min({buf.size(), end - pos_, step_});
    std::memcpy(buf.data(), bytes_.data() + pos_, n);
    pos_ += n;
    co_return n;
  }
  std::optional<std::uint64_t> size() const override {
    return sized_ ? std::optional<std::uint64_t>(bytes_.size()) : std::nullopt;
  }

 private:
  std::string bytes_;
  std::optional<std::size_t> cut_at_;
  bool sized_;
  std::size_t step_;
  std::size_t pos_ = 0;
};

struct scripted_answer {
  scripted_answer(unsigned s = 200, std::vector<std::pair<std::string, std::string>> h = {}, std::string b = {})
      : status(s), headers(std::move(h)), body(std::move(b)) {}
  unsigned status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;                   // the GET body (HEAD: its length is announced, nothing sent)
  std::optional<std::size_t> cut_at;  // the body breaks off after this many bytes
  bool content_length = true;         // false: no Content-Length (a chunked body)
  boost::system::error_code error;    // set: no response at all
};

struct recorded_request {
  std::string method;
  std::string target;
  std::string accept;
  std::string range;
};

class scripted_upstream final : public upstream::fetcher {
 public:
  explicit scripted_upstream(boost::asio::any_io_executor executor) : executor_(std::move(executor)) {}
  std::function<scripted_answer(const upstream::request&)> script;
  std::vector<recorded_request> calls;

  boost::asio::awaitable<upstream::response> fetch(upstream::registry&, upstream::request req,
                                                   boost::system::error_code& ec) override {
    calls.push_back({req.method, req.target, req.accept, req.range});
    co_await boost::asio::post(executor_, boost::asio::use_awaitable);
    auto a = script(req);
    upstream::response res;
    ec = a.error;
    if (ec) co_return res;
    res.status = a.status;
    for (auto& [k, v] : a.headers) res.headers.add(k, v);
    if (a.content_length) res.headers.set("Content-Length", std::to_string(a.body.size()));
    if (req.method != "HEAD" && !a.body.empty()) {
      res.body = std::make_unique<string_body>(std::move(a.body), a.cut_at, a.content_length);
    }
    co_return res;
  }
  const boost::asio::any_io_executor& executor() const override { return executor_; }

  // How many requests were sent with this method (and, if given, this target).
  std::size_t count(std::string_view method, std::string_view target = {}) const {
    std::size_t n = 0;
    for (const auto& c : calls) n += c.method == method && (target.empty() || c.target == target);
    return n;
  }

 private:
  boost::asio::any_io_executor executor_;
};

}  // namespace berth::testing
