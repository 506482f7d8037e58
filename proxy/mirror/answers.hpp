#pragma once
// How upstream answers become client replies, shared by the manifest, blob and
// listing paths: which headers pass, what an upstream status or transport error
// tells the client, and where a request goes upstream. Internal to mirror/.
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <optional>
#include <string>

#include "core/headers.hpp"
#include "core/reply.hpp"
#include "core/verifying_body.hpp"
#include "mirror/request.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::upstream {
struct response;
}

namespace berth::mirror {

// The longest header value taken from an upstream (or built from a client's input,
// as the rewritten Link is). Longer ones are dropped: no registry sends them, and
// past 64 KiB the reply could not be written at all.
constexpr std::size_t k_max_passed_header = 8 * 1024;

// Copies the response headers worth passing to a client (Content-Type, the digest,
// ranges, validators, Retry-After). Set-Cookie, WWW-Authenticate, Location and
// hop-by-hop fields stay behind.
void copy_headers(const core::headers& from, core::headers& to);
std::optional<std::uint64_t> content_length(const core::headers& h);
// Content-Type without parameters (containerd strips them too).
std::string bare_media_type(const core::headers& h);

// The client's answer when no usable upstream response came.
core::reply transport_error(const boost::system::error_code& ec, const std::string& registry);
// The client's answer for an upstream error status. An OCI JSON body from the
// upstream (Harbor's PROJECTPOLICYVIOLATION among them) is passed through intact.
boost::asio::awaitable<core::reply> upstream_error_reply(upstream::response& res, const pull_request& req,
                                                         std::size_t limit);

// Path and query of `req` at the upstream.
std::string upstream_target(const pull_request& req);

// What a verifying body does when the bytes are wrong: count and log it.
core::verifying_body::mismatch_fn report_mismatch(metrics::registry& metrics, std::string registry,
                                                  std::string expected, std::string kind);

// The headers of every blob answer from the cache (the node's or a peer's). Alone: a
// whole blob of a size not known yet (200, no Content-Length, so chunked).
void shape_unsized_reply(core::reply& r, const pull_request& req, const std::string& media_type);
// Status, headers and body span [first, end) for a blob of `size` bytes and the
// client's Range. False when the range cannot be satisfied (the reply is then a 416).
bool shape_blob_reply(core::reply& r, const pull_request& req, std::uint64_t size, const std::string& media_type,
                      std::uint64_t& first, std::uint64_t& end);

}  // namespace berth::mirror
