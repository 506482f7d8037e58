#include "mirror/blob_source.hpp"

#include "core/media_types.hpp"
#include "mirror/answers.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

namespace asio = boost::asio;
using boost::system::error_code;

upstream_blob_source::upstream_blob_source(upstream::fetcher& upstream, upstream::registry& reg, pull_request req,
                                           const mirror_options& options)
    : upstream_(upstream), reg_(reg), req_(std::move(req)), options_(options) {
  req_.kind = endpoint::blob;
  req_.head = false;
  req_.range.clear();
}

std::string upstream_blob_source::name() const {
  return reg_.id() + "/" + req_.name;
}

asio::awaitable<blob_fetch> upstream_blob_source::fetch() {
  upstream::request up;
  up.target = upstream_target(req_);
  up.repository = req_.name;
  blob_fetch out;
  error_code ec;
  auto res = co_await upstream_.fetch(reg_, up, ec);
  if (ec) {
    out.refusal = transport_error(ec, reg_.id());
    co_return out;
  }
  if (res.status != 200) {
    out.refusal = co_await upstream_error_reply(res, req_, options_.max_error_body_bytes);
    co_return out;
  }
  // No Content-Length (a chunked or close-delimited body) is fine: the fill learns
  // the size at the end and verifies the digest all the same.
  out.size = content_length(res.headers);
  // Only a well-formed bare media type is kept: it is served again to every client.
  out.media_type = bare_media_type(res.headers);
  if (!core::media_type::valid(out.media_type)) out.media_type = "application/octet-stream";
  out.body = std::move(res.body);
  co_return out;
}

asio::awaitable<bool> upstream_blob_source::grants_access() {
  upstream::request up;
  up.method = "HEAD";
  up.target = upstream_target(req_);
  up.repository = req_.name;
  error_code ec;
  auto res = co_await upstream_.fetch(reg_, up, ec);
  co_return !ec && res.status == 200;
}

asio::awaitable<std::unique_ptr<core::body_source>> upstream_blob_source::fetch_range(std::uint64_t offset,
                                                                                      std::optional<std::uint64_t> end,
                                                                                      std::string& problem) {
  upstream::request up;
  up.target = upstream_target(req_);
  up.repository = req_.name;
  up.range = "bytes=" + std::to_string(offset) + "-" + (end ? std::to_string(*end - 1) : std::string());
  error_code ec;
  auto res = co_await upstream_.fetch(reg_, up, ec);
  if (ec) {
    problem = ec.message();
    co_return nullptr;
  }
  // Only a 206 that starts exactly where asked continues the body: a 200 would
  // start again from byte 0.
  const auto range = res.headers.get("Content-Range");
  if (res.status != 206 || !range || range->rfind("bytes " + std::to_string(offset) + "-", 0) != 0 || !res.body) {
    problem = "no usable 206 (HTTP " + std::to_string(res.status) + ")";
    co_return nullptr;
  }
  co_return std::move(res.body);
}

}  // namespace berth::mirror
