#pragma once
// Where a fill's bytes come from. The fill driver reads a blob_source and does not
// care what is behind it: the upstream registry today (upstream_blob_source), another
// Berth node once nodes share blobs. Tests script one. Whatever the source, every
// byte is verified against the digest by the fill before it is published or its
// last byte released.
#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/body_source.hpp"
#include "core/chunk_hash.hpp"
#include "core/reply.hpp"
#include "mirror/options.hpp"
#include "mirror/request.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::upstream {
class fetcher;
class registry;
}  // namespace berth::upstream

namespace berth::mirror {

// The answer to "the whole blob, please".
struct blob_fetch {
  // Set when there are no bytes: the answer every client of the fill gets instead
  // (an upstream error status, an unreachable upstream).
  std::optional<core::reply> refusal;
  std::unique_ptr<core::body_source> body;  // null: an empty body
  std::optional<std::uint64_t> size;        // the blob's size, when announced
  std::string media_type;                   // bare and well-formed ("application/octet-stream" if not)
};

class blob_source {
 public:
  virtual ~blob_source() = default;
  // The whole blob from its first byte.
  virtual boost::asio::awaitable<blob_fetch> fetch() = 0;
  // Bytes [offset, end) of the blob (end nullopt: to its end), starting exactly at
  // `offset`; null (and `problem` says why, for the log) when the source cannot.
  virtual boost::asio::awaitable<std::unique_ptr<core::body_source>> fetch_range(std::uint64_t offset,
                                                                                 std::optional<std::uint64_t> end,
                                                                                 std::string& problem) = 0;
  // Names the source in logs: "<registry>/<repository>" for the upstream.
  virtual std::string name() const = 0;
  // The bytes this source gave did not hash to the digest (the fill has failed).
  virtual void rejected() {}

  // Chunk by chunk (core/chunk_hash.hpp), for a source that vouches for what it
  // sends now (another node): the fill keeps each chunk from its clients until it
  // matches the hash the source gives for it, and on a mismatch goes on from the
  // chunk's start elsewhere, so its clients never see the wrong bytes.
  virtual bool vouches() const { return false; }
  // The hash the source gives for chunk `index`; nullopt when it has none (the chunk
  // is then released unchecked: the digest still checks the blob at the end).
  virtual boost::asio::awaitable<std::optional<core::chunk_digest>> chunk_hash(std::uint64_t /*index*/) {
    co_return std::nullopt;
  }
  // Its bytes for chunk `index` did not match: the source drops whoever sent them,
  // and the fill asks fetch_range for the rest from where the holding began.
  virtual void wrong_chunk(std::uint64_t /*index*/) {}
  // Chunk `index` did not match, but the source took over inside it, after bytes
  // released unchecked: either may be wrong. The source moves on without blaming
  // whoever sent the held bytes (they are dropped, and not part of the blob).
  virtual void passed_over(std::uint64_t /*index*/) {}
};

// The upstream registry as a blob source: GET /v2/<repository>/blobs/<digest> with
// Berth's credentials, through `upstream` (which must belong to the executor the
// source is read on).
class upstream_blob_source final : public blob_source {
 public:
  // `req` names the blob (its digest) and the repository it is fetched for.
  upstream_blob_source(upstream::fetcher& upstream, upstream::registry& reg, pull_request req,
                       const mirror_options& options);
  boost::asio::awaitable<blob_fetch> fetch() override;
  boost::asio::awaitable<std::unique_ptr<core::body_source>> fetch_range(std::uint64_t offset,
                                                                         std::optional<std::uint64_t> end,
                                                                         std::string& problem) override;
  std::string name() const override;
  // Before a fill takes the blob from elsewhere (another node): may the repository
  // have it? Asked as Berth (HEAD); true only on a 200. Anything else (a refusal, a
  // Harbor proxy-cache project's 404 for a blob it has not fetched yet, an
  // unreachable upstream) leaves the answer to a GET from the upstream itself.
  boost::asio::awaitable<bool> grants_access();
  upstream::fetcher& via() { return upstream_; }
  const pull_request& request() const { return req_; }

 private:
  upstream::fetcher& upstream_;
  upstream::registry& reg_;
  pull_request req_;
  const mirror_options& options_;
};

// Where fills get their bytes when the node is not alone: other nodes first, then
// the upstream (peer::cluster). The mirror asks it for every fill it starts.
class fill_sources {
 public:
  virtual ~fill_sources() = default;
  // The source for one fill; `upstream` is the upstream's own, for what the cluster
  // cannot give and for the repository's authorization.
  virtual std::shared_ptr<blob_source> for_fill(std::shared_ptr<upstream_blob_source> upstream) = 0;
};

}  // namespace berth::mirror
