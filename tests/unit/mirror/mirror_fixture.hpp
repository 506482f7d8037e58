#pragma once
// A mirror wired to a scripted upstream, a memory-only metadata cache and a real
// blob store in a temporary directory, all on one io_context.
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "core/hasher.hpp"
#include "core/reply.hpp"
#include "meta/cache.hpp"
#include "meta/local_db.hpp"
#include "meta/redis.hpp"
#include "metrics/metrics.hpp"
#include "mirror/mirror.hpp"
#include "scripted_upstream.hpp"
#include "store/blob_store.hpp"
#include "upstream/token_cache.hpp"

namespace berth::testing {

// containerd's Accept for manifests.
inline constexpr const char* k_containerd_accept =
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
inline constexpr const char* k_oci_manifest_type = "application/vnd.oci.image.manifest.v1+json";

// What a well-behaved registry answers: manifests by tag or digest, blobs with
// ranges. Tests wrap it to misbehave.
struct fake_registry {
  std::map<std::string, std::string> manifests;  // digest -> bytes (OCI image manifests)
  std::map<std::string, std::string> tags;       // "<repository>:<tag>" -> digest
  std::map<std::string, std::string> blobs;      // digest -> bytes

  std::string add_manifest(const std::string& repository, const std::string& tag, const std::string& bytes) {
    const auto d = core::digest_of(bytes, "sha256");
    manifests[d] = bytes;
    tags[repository + ":" + tag] = d;
    return d;
  }
  std::string add_blob(const std::string& bytes) {
    const auto d = core::digest_of(bytes, "sha256");
    blobs[d] = bytes;
    return d;
  }

  scripted_answer operator()(const upstream::request& r) const {
    const std::string& t = r.target;
    if (const auto at = t.find("/manifests/"); at != std::string::npos) {
      const std::string repository = t.substr(4, at - 4);
      std::string ref = t.substr(at + 11);
      if (!ref.starts_with("sha256:")) {
        const auto tag = tags.find(repository + ":" + ref);
        if (tag == tags.end()) return not_found("MANIFEST_UNKNOWN");
        ref = tag->second;
      }
      const auto m = manifests.find(ref);
      if (m == manifests.end()) return not_found("MANIFEST_UNKNOWN");
      return {200, {{"Content-Type", k_oci_manifest_type}, {"Docker-Content-Digest", ref}}, m->second};
    }
    if (const auto at = t.find("/blobs/"); at != std::string::npos) {
      const auto b = blobs.find(t.substr(at + 7));
      if (b == blobs.end()) return not_found("BLOB_UNKNOWN");
      if (r.range.starts_with("bytes=")) {
        const auto dash = r.range.find('-');
        const std::uint64_t first = std::stoull(r.range.substr(6, dash - 6));
        const std::string last = r.range.substr(dash + 1);
        const std::uint64_t end = last.empty() ? b->second.size() : std::stoull(last) + 1;
        return {206,
                {{"Content-Type", "application/octet-stream"},
                 {"Content-Range", "bytes " + std::to_string(first) + "-" + std::to_string(end - 1) + "/" +
                                       std::to_string(b->second.size())}},
                b->second.substr(first, end - first)};
      }
      return {200, {{"Content-Type", "application/octet-stream"}, {"Docker-Content-Digest", b->first}}, b->second};
    }
    return not_found("NAME_UNKNOWN");
  }
  static scripted_answer not_found(const std::string& code) {
    return {404, {{"Content-Type", "application/json"}}, R"({"errors":[{"code":")" + code + R"(","message":"x"}]})"};
  }
};

class mirror_fixture : public ::testing::Test {
 protected:
  void SetUp() override {
    upstream::registry_options ro;
    ro.names = {"registry.test"};
    ro.endpoint = "https://registry.test";
    reg_ = std::make_unique<upstream::registry>(ro, tokens_, metrics_);
    table_ = std::make_unique<mirror::registry_table>(std::vector<upstream::registry*>{reg_.get()}, "registry.test");
    dir_ = std::filesystem::temp_directory_path() / ("berth-mirror-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    options_.resume_backoff = {std::chrono::milliseconds(1), std::chrono::milliseconds(1),
                               std::chrono::milliseconds(1)};
    options_.fill_stall = std::chrono::seconds(5);
    meta_options_.tag_ttl = std::chrono::minutes(1);
    up_.script = [this](const upstream::request& r) { return registry_(r); };
  }
  void TearDown() override {
    settle();
    mirror_.reset();
    store_.reset();
    meta_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Builds the mirror; call after adjusting options_ / meta_options_.
  void start(bool with_store = true, bool with_meta = true) {
    if (with_store) {
      store::store_options so;
      so.dir = dir_.string();
      store_ = std::make_unique<store::blob_store>(so, store::posix_filesystem(), metrics_, open_index_);
      store_->open();
    }
    if (with_meta) meta_ = std::make_unique<meta::cache>(meta_options_, metrics_, nullptr, nullptr);
    mirror_ = std::make_unique<mirror::mirror>(*table_, up_, metrics_, store_.get(), meta_.get(), options_);
  }

  template <class T>
  T run(boost::asio::awaitable<T> task) {
    std::optional<T> out;
    std::exception_ptr error;
    boost::asio::co_spawn(ctx_, std::move(task), [&](std::exception_ptr e, T v) {
      error = e;
      out = std::move(v);
    });
    ctx_.restart();
    while (!out && ctx_.run_one_for(std::chrono::seconds(10)) > 0) {
    }
    if (error) std::rethrow_exception(error);
    if (!out) throw std::runtime_error("the task did not finish within 10 s");
    return std::move(*out);
  }
  // Runs whatever is still queued (a fill publishing after its last reader finished).
  void settle() {
    ctx_.restart();
    ctx_.run_for(std::chrono::seconds(5));
    if (store_) store_->flush();  // the publish runs on the store's disk thread
  }

  core::reply serve(const mirror::pull_request& req) { return run(mirror_->serve(req)); }

  // The reply's whole body, and the error it ended with (a stream that broke off).
  struct drained {
    std::string bytes;
    boost::system::error_code error;
  };
  drained drain(core::reply& r) {
    if (!r.stream) return {r.body, {}};
    auto read_all = [](core::body_source& s) -> boost::asio::awaitable<drained> {
      drained d;
      char buf[65536];
      while (true) {
        const auto n = co_await s.read(boost::asio::buffer(buf), d.error);
        if (d.error || n == 0) break;
        d.bytes.append(buf, n);
      }
      co_return d;
    };
    return run(read_all(*r.stream));
  }

  static mirror::pull_request manifest(const std::string& repository, const std::string& reference,
                                       std::string accept = k_containerd_accept) {
    mirror::pull_request r;
    r.kind = mirror::endpoint::manifest;
    r.name = repository;
    r.reference = reference;
    r.digest = core::parse_digest(reference);
    r.accept = std::move(accept);
    return r;
  }
  static mirror::pull_request blob(const std::string& repository, const std::string& digest) {
    mirror::pull_request r;
    r.kind = mirror::endpoint::blob;
    r.name = repository;
    r.reference = digest;
    r.digest = core::parse_digest(digest);
    return r;
  }
  static mirror::pull_request head(mirror::pull_request r) {
    r.head = true;
    return r;
  }

  std::string metric(const std::string& needle) {
    const auto text = metrics_.serialize();
    const auto at = text.find(needle);
    if (at == std::string::npos) return "<absent>";
    const auto eol = text.find('\n', at);
    return text.substr(at + needle.size(), eol - at - needle.size());
  }

  boost::asio::io_context ctx_;
  metrics::registry metrics_;
  upstream::token_cache tokens_;
  std::unique_ptr<upstream::registry> reg_;
  std::unique_ptr<mirror::registry_table> table_;
  fake_registry registry_;
  scripted_upstream up_{ctx_.get_executor()};
  std::filesystem::path dir_;
  mirror::mirror_options options_;
  meta::metadata_options meta_options_;
  store::blob_store::index_opener open_index_;  // null: the real index
  std::unique_ptr<store::blob_store> store_;
  std::unique_ptr<meta::cache> meta_;
  std::unique_ptr<mirror::mirror> mirror_;
};

}  // namespace berth::testing
