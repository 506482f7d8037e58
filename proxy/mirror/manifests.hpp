#pragma once
// The manifest path: a tag or digest resolved through the metadata cache (one
// upstream question per answer for the cluster, revalidated with HEAD once its TTL
// runs out), every byte checked against its digest before a client sees it, and
// what the cache cannot vouch for (no manifest type accepted, a type the client did
// not ask for, a schema-1 conversion) passed straight through.
#include <boost/asio/awaitable.hpp>
#include <optional>
#include <string>

#include "core/reply.hpp"
#include "mirror/options.hpp"
#include "mirror/request.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::upstream {
class fetcher;
class registry;
struct request;
struct response;
}  // namespace berth::upstream
namespace berth::meta {
class cache;
struct entry;
struct fetched;
struct manifest;
}  // namespace berth::meta

namespace berth::mirror {

class manifest_path {
 public:
  // `meta` may be null: every manifest request goes upstream.
  manifest_path(upstream::fetcher& upstream, metrics::registry& metrics, meta::cache* meta,
                const mirror_options& options);

  boost::asio::awaitable<core::reply> serve(upstream::registry& reg, const pull_request& req);

 private:
  // The manifest straight from the upstream, with the client's Accept; nothing cached.
  boost::asio::awaitable<core::reply> pass_through(upstream::registry& reg, const pull_request& req);
  // Asks the upstream about req's tag or digest for the metadata cache: a HEAD when
  // `known`'s bytes are at hand (revalidation), else a GET whose bytes are kept.
  boost::asio::awaitable<meta::fetched> fetch(upstream::registry& reg, const pull_request& req, unsigned accept_class,
                                              const std::optional<meta::entry>& known);

  // A verified manifest body. `converted`: a schema-1 conversion, whose `digest`
  // names the signed payload, not `bytes`.
  struct body {
    std::string bytes;
    std::string digest;
    bool converted = false;
  };
  // Why a body could not be read: `reply` is the client's answer. `too_large` tells
  // an oversized manifest from a broken or wrong one, and `mismatch` bytes that
  // disagree with their digest (asked for, or announced by the upstream's
  // Docker-Content-Digest): worth one more try, never an answer.
  struct failure {
    core::reply reply;
    bool too_large = false;
    bool mismatch = false;
  };
  // A 200 manifest answer as the client gets it.
  static core::reply reply_for(const upstream::response& res, const pull_request& req, body b);
  // Reads a 200 response's body and checks it against `expected` (when set) and the
  // announced digest. Null on failure, which is then in `fail`.
  boost::asio::awaitable<std::optional<body>> read_once(upstream::registry& reg, upstream::response& res,
                                                        const pull_request& req, const std::string& expected,
                                                        failure& fail);
  // read_once, and on a mismatch `up` asked once more with GET (`res` is then that
  // second response).
  boost::asio::awaitable<std::optional<body>> read(upstream::registry& reg, upstream::request& up,
                                                   upstream::response& res, const pull_request& req,
                                                   const std::string& expected, failure& fail);
  // GETs a manifest by digest, verifies and keeps it. On failure, `fail` is the client's answer.
  boost::asio::awaitable<std::optional<meta::manifest>> download(upstream::registry& reg, const pull_request& req,
                                                                 const std::string& digest, unsigned accept_class,
                                                                 meta::fetched& fail);

  upstream::fetcher& upstream_;
  metrics::registry& metrics_;
  meta::cache* meta_;
  const mirror_options& options_;
};

}  // namespace berth::mirror
