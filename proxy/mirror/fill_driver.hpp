#pragma once
// Drives one cache fill from a blob source to the end: starts it with the source's
// size and type, streams the bytes in, and when the body breaks off, stalls or
// trickles, continues it with a ranged fetch from the byte it reached (a few times,
// with backoff), so the clients following the fill see one uninterrupted body. The
// fill verifies the digest; a source that refuses fails the fill with its answer,
// which every client of the fill gets.
#include <boost/asio/awaitable.hpp>
#include <memory>
#include <string>

#include "mirror/options.hpp"

namespace berth::metrics {
class registry;
}
namespace berth::store {
class fill;
}

namespace berth::mirror {

class blob_source;

// `confirmed_for` is the "<registry>/<repository>" the upstream confirmed the blob
// for (recorded with it). Never throws past its own frame: an exception fails the fill.
boost::asio::awaitable<void> run_fill(std::shared_ptr<store::fill> f, std::shared_ptr<blob_source> source,
                                      std::string confirmed_for, metrics::registry& metrics,
                                      const mirror_options& options);

}  // namespace berth::mirror
