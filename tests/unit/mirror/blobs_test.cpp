// The blob path against a scripted upstream and a real blob store: fills, resume
// after a cut, wrong bytes, upstream errors, and the repository authorization that
// guards every hit.
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <random>

#include "../store/faulting_index.hpp"
#include "mirror_fixture.hpp"

using namespace berth;
using namespace std::chrono_literals;
using berth::testing::scripted_answer;

namespace {

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class blobs : public berth::testing::mirror_fixture {};

}  // namespace

TEST_F(blobs, AMissIsFilledOnceThenEveryHitComesFromTheCache) {
  start();
  const auto bytes = random_bytes(300000, 1);
  const auto d = registry_.add_blob(bytes);
  auto r = serve(blob("library/app", d));
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.headers.get("Docker-Content-Digest"), d);
  auto got = drain(r);
  EXPECT_FALSE(got.error) << got.error.message();
  EXPECT_EQ(got.bytes, bytes);
  settle();
  ASSERT_TRUE(store_->stat(d));
  EXPECT_EQ(up_.calls.size(), 1u);

  // A hit, a HEAD and a range: no upstream request (the fill confirmed the repository).
  auto hit = serve(blob("library/app", d));
  EXPECT_EQ(drain(hit).bytes, bytes);
  auto h = serve(head(blob("library/app", d)));
  EXPECT_EQ(h.head_length, bytes.size());
  auto ranged_req = blob("library/app", d);
  ranged_req.range = "bytes=10-19";
  auto ranged = serve(ranged_req);
  EXPECT_EQ(ranged.status, 206u);
  EXPECT_EQ(ranged.headers.get("Content-Range"), "bytes 10-19/300000");
  EXPECT_EQ(drain(ranged).bytes, bytes.substr(10, 10));
  EXPECT_EQ(up_.calls.size(), 1u);
}

TEST_F(blobs, ClientsOfOneMissShareOneUpstreamFetch) {
  start();
  const auto bytes = random_bytes(500000, 2);
  const auto d = registry_.add_blob(bytes);
  auto both = [&]() -> boost::asio::awaitable<std::vector<std::string>> {
    std::vector<core::reply> replies;
    for (int i = 0; i < 3; ++i) replies.push_back(co_await mirror_->serve(blob("library/app", d)));
    std::vector<std::string> out;
    for (auto& r : replies) {
      std::string s;
      char buf[65536];
      boost::system::error_code ec;
      while (r.stream) {
        const auto n = co_await r.stream->read(boost::asio::buffer(buf), ec);
        if (ec || n == 0) break;
        s.append(buf, n);
      }
      out.push_back(std::move(s));
    }
    co_return out;
  };
  for (const auto& s : run(both())) EXPECT_EQ(s, bytes);
  EXPECT_EQ(up_.count("GET"), 1u);
  EXPECT_EQ(metric("berth_cache_requests_total{result=\"coalesced\"} "), "2");
}

TEST_F(blobs, ABodyThatBreaksOffIsResumedWithRangeAndTheClientSeesOneBody) {
  start();
  const auto bytes = random_bytes(300000, 3);
  const auto d = registry_.add_blob(bytes);
  int cuts = 2;
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    if (cuts-- > 0) a.cut_at = a.body.size() / 3;  // every answer breaks off a third of the way in
    return a;
  };
  auto r = serve(blob("library/app", d));
  auto got = drain(r);
  EXPECT_FALSE(got.error) << got.error.message();
  EXPECT_EQ(got.bytes, bytes);
  ASSERT_EQ(up_.calls.size(), 3u);
  EXPECT_EQ(up_.calls[0].range, "");
  EXPECT_EQ(up_.calls[1].range, "bytes=100000-");
  EXPECT_EQ(up_.calls[2].range, "bytes=166666-");
  settle();
  EXPECT_TRUE(store_->stat(d));
  EXPECT_EQ(metric("berth_cache_resumes_total{result=\"ok\"} "), "2");
}

TEST_F(blobs, AResumeAnsweredWithTheWholeBlobIsNotSplicedIn) {
  start();
  const auto bytes = random_bytes(200000, 4);
  const auto d = registry_.add_blob(bytes);
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    if (r.range.empty())
      a.cut_at = 50000;
    else
      a = scripted_answer{200, {}, bytes};  // ignores Range: bytes from 0 again
    return a;
  };
  auto r = serve(blob("library/app", d));
  auto got = drain(r);
  EXPECT_TRUE(got.error);  // the client's body breaks off: it never sees a spliced blob
  EXPECT_LT(got.bytes.size(), bytes.size());
  EXPECT_EQ(got.bytes, bytes.substr(0, got.bytes.size()));
  EXPECT_EQ(up_.calls.size(), 1u + options_.resume_backoff.size());
  settle();
  EXPECT_FALSE(store_->stat(d));
  EXPECT_EQ(metric("berth_cache_resumes_total{result=\"failed\"} "), "3");
}

TEST_F(blobs, WrongBytesNeverReachTheCacheNorAClientsLastByte) {
  start();
  const auto bytes = random_bytes(100000, 5);
  const auto d = registry_.add_blob(bytes);
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    a.body[99999] ^= 1;
    return a;
  };
  auto r = serve(blob("library/app", d));
  auto got = drain(r);
  EXPECT_TRUE(got.error);
  EXPECT_LT(got.bytes.size(), bytes.size());
  settle();
  EXPECT_FALSE(store_->stat(d));
  // The next request fills again, from a now healthy upstream.
  up_.script = [this](const upstream::request& r) { return registry_(r); };
  auto again = serve(blob("library/app", d));
  EXPECT_EQ(drain(again).bytes, bytes);
}

TEST_F(blobs, AChunkedUpstreamBodyIsFilledAndVerified) {
  start();
  const auto bytes = random_bytes(70000, 6);
  const auto d = registry_.add_blob(bytes);
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    a.content_length = false;
    return a;
  };
  auto r = serve(blob("library/app", d));
  EXPECT_FALSE(r.headers.get("Content-Length"));
  auto got = drain(r);
  EXPECT_FALSE(got.error);
  EXPECT_EQ(got.bytes, bytes);
  settle();
  ASSERT_TRUE(store_->stat(d));
  EXPECT_EQ(store_->stat(d)->size, bytes.size());
}

TEST_F(blobs, UpstreamErrorsReachTheClientWithTheirStatus) {
  start();
  const auto d = core::digest_of("nothing", "sha256");
  auto missing = serve(blob("library/app", d));
  EXPECT_EQ(missing.status, 404u);
  EXPECT_NE(missing.body.find("BLOB_UNKNOWN"), std::string::npos);  // the upstream's own body

  up_.script = [](const upstream::request&) { return scripted_answer{503, {{"Retry-After", "3"}}, ""}; };
  auto down = serve(blob("library/app", d));
  EXPECT_EQ(down.status, 503u);
  EXPECT_EQ(down.headers.get("Retry-After"), "3");
  ASSERT_TRUE(down.error);
  EXPECT_EQ(down.error->code, "UNAVAILABLE");

  up_.script = [](const upstream::request&) {
    scripted_answer a;
    a.error = upstream::errc::timeout;
    return a;
  };
  EXPECT_EQ(serve(blob("library/app", d)).status, 504u);
  settle();
  EXPECT_FALSE(store_->stat(d));
}

TEST_F(blobs, AnotherRepositoryGetsACachedBlobOnlyOnceTheUpstreamSaysSo) {
  start();
  const auto bytes = random_bytes(20000, 7);
  const auto d = registry_.add_blob(bytes);
  auto first = serve(blob("team-a/app", d));
  drain(first);
  settle();
  const auto before = up_.calls.size();

  // team-b/app: the upstream does not know the blob there (404 to HEAD, and to the
  // GET that follows a HEAD 404 for Harbor's proxy-cache projects): no bytes.
  up_.script = [&](const upstream::request& r) {
    if (r.target.starts_with("/v2/team-b/")) return berth::testing::fake_registry::not_found("BLOB_UNKNOWN");
    return registry_(r);
  };
  auto denied = serve(blob("team-b/app", d));
  EXPECT_EQ(denied.status, 404u);
  EXPECT_FALSE(denied.stream);
  ASSERT_EQ(up_.calls.size(), before + 2);
  EXPECT_EQ(up_.calls[before].method, "HEAD");
  EXPECT_EQ(up_.calls[before].target, "/v2/team-b/app/blobs/" + d);
  EXPECT_EQ(up_.calls[before + 1].method, "GET");
  EXPECT_EQ(metric("berth_cache_requests_total{result=\"denied\"} "), "1");

  // Now it does: served from the cache after one HEAD, and remembered.
  up_.script = [this](const upstream::request& r) { return registry_(r); };
  auto allowed = serve(blob("team-b/app", d));
  EXPECT_EQ(drain(allowed).bytes, bytes);
  auto again = serve(blob("team-b/app", d));
  EXPECT_EQ(drain(again).bytes, bytes);
  EXPECT_EQ(up_.count("HEAD"), 2u);
  EXPECT_EQ(up_.count("GET", "/v2/team-a/app/blobs/" + d), 1u);
  EXPECT_EQ(up_.calls.size(), before + 3);
}

TEST_F(blobs, AnExpiredConfirmationStandsWhileTheUpstreamIsDownButNotAfterARefusal) {
  options_.authorization_ttl = 0ms;
  start();
  const auto bytes = random_bytes(20000, 8);
  const auto d = registry_.add_blob(bytes);
  auto first = serve(blob("library/app", d));
  drain(first);
  settle();

  up_.script = [](const upstream::request&) { return scripted_answer{503}; };
  auto stale = serve(blob("library/app", d));
  EXPECT_EQ(stale.status, 200u);
  EXPECT_EQ(drain(stale).bytes, bytes);
  EXPECT_EQ(metric("berth_cache_requests_total{result=\"authorized_stale\"} "), "1");

  up_.script = [](const upstream::request&) { return scripted_answer{401}; };
  auto refused = serve(blob("library/app", d));
  EXPECT_EQ(refused.status, 401u);
  EXPECT_FALSE(refused.stream);
  // The refusal revoked the confirmation: with the upstream down again, nothing is served.
  up_.script = [](const upstream::request&) { return scripted_answer{503}; };
  EXPECT_EQ(serve(blob("library/app", d)).status, 503u);
}

TEST_F(blobs, AJoinedFillIsAuthorizedForTheJoinersRepositoryToo) {
  start();
  const auto bytes = random_bytes(400000, 9);
  const auto d = registry_.add_blob(bytes);
  up_.script = [&](const upstream::request& r) {
    if (r.target.starts_with("/v2/team-b/")) return scripted_answer{403};
    return registry_(r);
  };
  auto both = [&]() -> boost::asio::awaitable<std::pair<unsigned, unsigned>> {
    auto a = co_await mirror_->serve(blob("team-a/app", d));
    auto b = co_await mirror_->serve(blob("team-b/app", d));
    co_return std::pair{a.status, b.status};
  };
  const auto [a, b] = run(both());
  EXPECT_EQ(a, 200u);
  EXPECT_EQ(b, 403u);
  EXPECT_EQ(up_.count("GET"), 1u);
  EXPECT_EQ(up_.count("HEAD", "/v2/team-b/app/blobs/" + d), 1u);
}

TEST_F(blobs, AHeadMissAsksTheUpstreamWithGetWhenItsHeadSays404) {
  start();
  const auto bytes = random_bytes(1000, 10);
  const auto d = registry_.add_blob(bytes);
  // A Harbor proxy-cache project: HEAD 404 for what it has not cached, GET works.
  up_.script = [&](const upstream::request& r) {
    if (r.method == "HEAD") return berth::testing::fake_registry::not_found("BLOB_UNKNOWN");
    return registry_(r);
  };
  auto h = serve(head(blob("library/app", d)));
  EXPECT_EQ(h.status, 200u);
  EXPECT_EQ(h.head_length, bytes.size());
  EXPECT_EQ(up_.count("HEAD"), 1u);
  EXPECT_EQ(up_.count("GET"), 1u);
  settle();
  EXPECT_FALSE(store_->stat(d));  // a HEAD fills nothing
}

TEST_F(blobs, WithoutACacheBlobsStreamVerifiedFromTheUpstream) {
  start(false, true);
  const auto bytes = random_bytes(100000, 11);
  const auto d = registry_.add_blob(bytes);
  auto good = serve(blob("library/app", d));
  EXPECT_EQ(drain(good).bytes, bytes);
  up_.script = [&](const upstream::request& r) {
    auto a = registry_(r);
    a.body[0] ^= 1;
    return a;
  };
  auto bad = serve(blob("library/app", d));
  auto got = drain(bad);
  EXPECT_TRUE(got.error);
  EXPECT_LT(got.bytes.size(), bytes.size());
  EXPECT_EQ(metric("berth_digest_mismatches_total{kind=\"blob\",registry=\"registry.test\"} "), "1");
}

TEST_F(blobs, AnUnreadableCacheIndexIsA503NotAMissThatFetchesAgain) {
  auto fail_reads = std::make_shared<std::atomic<bool>>(false);
  open_index_ = berth::testing::faulting_index_opener(fail_reads);
  start();
  const auto bytes = random_bytes(5000, 12);
  const auto d = registry_.add_blob(bytes);
  auto first = serve(blob("library/app", d));
  EXPECT_EQ(drain(first).bytes, bytes);
  settle();
  const auto before = up_.calls.size();

  *fail_reads = true;
  for (auto req : {blob("library/app", d), head(blob("library/app", d))}) {
    auto r = serve(req);
    EXPECT_EQ(r.status, 503u);
    EXPECT_EQ(r.headers.get("Retry-After"), "1");
    ASSERT_TRUE(r.error);
    EXPECT_EQ(r.error->code, "UNAVAILABLE");
  }
  EXPECT_EQ(up_.calls.size(), before) << "no fill, no upstream request for a blob the cache holds";
  *fail_reads = false;
  auto again = serve(blob("library/app", d));
  EXPECT_EQ(drain(again).bytes, bytes);
}
