#include "store/blob_store.hpp"

#include <algorithm>
#include <boost/asio/this_coro.hpp>
#include <boost/system/errc.hpp>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "core/log.hpp"
#include "metrics/metrics.hpp"

namespace berth::store {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// "sha256:abcd..." -> ("sha256", "abcd...")
std::pair<std::string, std::string> split_digest(const std::string& digest) {
  const auto colon = digest.find(':');
  return {digest.substr(0, colon), digest.substr(colon + 1)};
}

constexpr std::int64_t k_touch_interval = 60;  // seconds between last-access updates of one blob

}  // namespace

std::string_view to_string(fill_failure f) {
  switch (f) {
    case fill_failure::none: return "none";
    case fill_failure::upstream_answer: return "upstream_answer";
    case fill_failure::upstream_broken: return "upstream_broken";
    case fill_failure::digest_mismatch: return "digest_mismatch";
    case fill_failure::disk: return "disk";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// fill

fill::fill(blob_store& store, std::string digest, std::string algorithm)
    : store_(store), digest_(std::move(digest)), hasher_(algorithm) {}

fill::~fill() {
  if (write_fd_ >= 0) store_.fs().close(write_fd_);
  if (!published_ && !temp_path_.empty()) store_.fs().remove(temp_path_);
  store_.fill_ended(digest_);
}

void fill::changed_locked(std::vector<std::shared_ptr<asio::steady_timer>>& wake) {
  ++state_.version;
  wake = waiters_.take();
}

std::string fill::source() const {
  std::lock_guard lock(mu_);
  return source_;
}

bool fill::start(std::uint64_t size, std::string media_type, std::string source) {
  temp_path_ = store_.new_temp_path(digest_);
  {
    std::lock_guard lock(mu_);
    read_path_ = temp_path_;
    source_ = std::move(source);
  }
  error_code ec;
  write_fd_ = store_.fs().create(temp_path_, ec);
  if (ec) {
    log::warn("cache_write_failed", {{"digest", digest_}, {"path", temp_path_}, {"error", ec.message()}});
    temp_path_.clear();
    fail(fill_failure::disk);
    return false;
  }
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    state_.started = true;
    state_.size = size;
    state_.media_type = std::move(media_type);
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
  return true;
}

bool fill::append(const char* data, std::size_t n) {
  const auto p = snapshot();
  const std::uint64_t offset = p.written;
  if (offset + n > p.size) {
    // More bytes than announced: the upstream is wrong about this blob.
    store_.metrics().digest_mismatch("cache", "blob_length");
    log::error("digest_mismatch", {{"kind", "blob_length"}, {"expected", digest_}, {"announced", p.size}});
    fail(fill_failure::digest_mismatch);
    return false;
  }
  std::size_t done = 0;
  while (done < n) {
    error_code ec;
    const auto w = store_.fs().pwrite(write_fd_, data + done, n - done, offset + done, ec);
    if (ec || w == 0) {
      log::warn("cache_write_failed", {{"digest", digest_}, {"error", ec ? ec.message() : "short write"}});
      fail(fill_failure::disk);
      return false;
    }
    done += w;  // a short write continues where it stopped
  }
  hasher_.update(data, n);
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    state_.written += n;
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
  return true;
}

std::uint64_t fill::written() const {
  std::lock_guard lock(mu_);
  return state_.written;
}

fill_failure fill::finish() {
  const auto p = snapshot();
  if (p.failure != fill_failure::none) return p.failure;
  const auto got = hasher_.finish();
  if (got != digest_ || p.written != p.size) {
    store_.metrics().digest_mismatch("cache", "blob");
    log::error("digest_mismatch",
               {{"kind", "blob"}, {"expected", digest_}, {"got", got}, {"bytes", p.written}, {"announced", p.size}});
    fail(fill_failure::digest_mismatch);
    return fill_failure::digest_mismatch;
  }
  // The bytes are proven right: the clients following this fill may have the last
  // one now. Durability (fsync, rename, index) is the cache's business, not theirs;
  // new requests become hits only once it is done.
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    state_.verified = true;
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
  error_code ec;
  store_.fs().fsync(write_fd_, ec);
  store_.fs().close(write_fd_);
  write_fd_ = -1;
  const bool published = !ec && store_.publish(digest_, temp_path_, p.size, p.media_type, source());
  {
    std::lock_guard lock(mu_);
    if (published) read_path_ = store_.blob_path(digest_);  // late joiners open the published file
  }
  if (!published) {
    log::warn("cache_publish_failed", {{"digest", digest_}, {"error", ec ? ec.message() : "rename or index failed"}});
    store_.disk_failed();
    store_.metrics().cache_fill("failed_disk");
  } else {
    store_.metrics().cache_fill("completed");
  }
  published_ = published;
  store_.fill_ended(digest_);  // from now on a lookup finds it (or, unpublished, a new fill starts)
  return published ? fill_failure::none : fill_failure::disk;
}

void fill::fail(fill_failure why, std::optional<upstream_answer> answer) {
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    if (state_.failure != fill_failure::none || state_.verified) return;
    state_.failure = why;
    answer_ = std::move(answer);
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
  store_.metrics().cache_fill(std::string("failed_") + std::string(to_string(why)));
  if (why == fill_failure::disk) store_.disk_failed();
  // Leave the in-flight map at once, so the next request starts afresh.
  store_.fill_ended(digest_);
}

fill::progress fill::snapshot() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::optional<upstream_answer> fill::answer() const {
  std::lock_guard lock(mu_);
  return answer_;
}

asio::awaitable<void> fill::wait_for_change(std::uint64_t seen_version, std::chrono::milliseconds limit) {
  const auto executor = co_await asio::this_coro::executor;
  std::shared_ptr<asio::steady_timer> timer;
  {
    std::lock_guard lock(mu_);
    if (state_.version != seen_version) co_return;
    timer = waiters_.park(executor, limit);
  }
  co_await core::wakeup_list::wait(timer);
  std::lock_guard lock(mu_);
  waiters_.forget(timer);
}

int fill::open_for_read(error_code& ec) const {
  std::string path;
  {
    std::lock_guard lock(mu_);
    path = read_path_;
  }
  const int fd = store_.fs().open_read(path, ec);
  if (ec && path != store_.blob_path(digest_)) {
    // Renamed into place between reading the path and opening it.
    ec = {};
    return store_.fs().open_read(store_.blob_path(digest_), ec);
  }
  return fd;
}

// ---------------------------------------------------------------------------
// open_blob

open_blob::open_blob(blob_store& store, std::string digest, int fd, blob_entry entry)
    : store_(store), digest_(std::move(digest)), fd_(fd), entry_(std::move(entry)) {}

open_blob::~open_blob() {
  store_.fs().close(fd_);
  store_.reader_closed(digest_);
}

// ---------------------------------------------------------------------------
// blob_store

blob_store::blob_store(store_options options, std::shared_ptr<filesystem> fs, metrics::registry& metrics)
    : options_(std::move(options)), fs_(std::move(fs)), metrics_(metrics) {}

blob_store::~blob_store() {
  join_background();
}

std::uint64_t blob_store::reconcile() {
  std::uint64_t adopted = 0;
  const auto root = options_.dir + "/blobs";
  for (const auto& alg : fs_->list(root)) {
    for (const auto& prefix : fs_->list(root + "/" + alg)) {
      for (const auto& hex : fs_->list(root + "/" + alg + "/" + prefix)) {
        const auto digest = alg + ":" + hex;
        {
          std::lock_guard lock(mu_);
          if (fills_.contains(digest)) continue;  // being published right now: its fill indexes it
        }
        if (hex.rfind(prefix, 0) != 0 || index_->get(digest)) continue;
        const auto size = fs_->file_size(root + "/" + alg + "/" + prefix + "/" + hex);
        if (!size) continue;
        const auto now = unix_now();
        if (!index_->put(digest, blob_entry{*size, "application/octet-stream", now, now, {}})) continue;
        ++adopted;
        std::lock_guard lock(mu_);
        usage_.bytes += *size;
        ++usage_.blobs;
      }
    }
  }
  if (adopted > 0) {
    const auto u = current_usage();
    metrics_.cache_usage(u.bytes, u.blobs);
    log::info("cache_reconciled", {{"adopted", adopted}, {"bytes", u.bytes}, {"blobs", u.blobs}});
  }
  return adopted;
}

void blob_store::start_reconcile() {
  reconciler_ = std::thread([this] { reconcile(); });
}

void blob_store::join_background() {
  if (reconciler_.joinable()) reconciler_.join();
}

std::string blob_store::blob_path(const std::string& digest) const {
  const auto [alg, hex] = split_digest(digest);
  return options_.dir + "/blobs/" + alg + "/" + hex.substr(0, 2) + "/" + hex;
}

std::string blob_store::new_temp_path(const std::string& digest) {
  std::lock_guard lock(mu_);
  return options_.dir + "/tmp/" + split_digest(digest).second + "." + std::to_string(++temp_counter_);
}

void blob_store::open() {
  error_code ec;
  for (const char* sub : {"/blobs", "/tmp", "/index"}) {
    fs_->make_dirs(options_.dir + sub, ec);
    if (ec) throw std::runtime_error("cache dir " + options_.dir + sub + ": " + ec.message());
  }
  // The index first: its lock makes this the cache's only writer, so the temp files
  // below cannot belong to another running Berth.
  index_ = index::open(options_.dir + "/index");
  // Temp files are fills a previous run did not finish: never served, never kept.
  std::size_t removed = 0;
  for (const auto& name : fs_->list(options_.dir + "/tmp")) {
    fs_->remove(options_.dir + "/tmp/" + name);
    ++removed;
  }
  usage u;
  index_->for_each([&](const std::string&, const blob_entry& e) {
    u.bytes += e.size;
    ++u.blobs;
  });
  if (options_.max_bytes > 0) {
    u.limit = options_.max_bytes;
  } else if (options_.max_fraction > 0) {
    u.limit = static_cast<std::uint64_t>(static_cast<double>(fs_->capacity(options_.dir)) * options_.max_fraction);
  }
  {
    std::lock_guard lock(mu_);
    usage_ = u;
  }
  metrics_.cache_usage(u.bytes, u.blobs);
  log::info("cache_opened", {{"dir", options_.dir},
                             {"blobs", u.blobs},
                             {"bytes", u.bytes},
                             {"limit", u.limit},
                             {"temp_files_removed", removed}});
}

std::optional<blob_entry> blob_store::stat(const std::string& digest) {
  return index_->get(digest);
}

void blob_store::add_source(const std::string& digest, const std::string& source) {
  std::lock_guard lock(mu_);  // read-modify-write of one entry
  auto e = index_->get(digest);
  if (!e || e->has_source(source)) return;
  e->sources.push_back(source);
  index_->put(digest, *e);
}

std::shared_ptr<open_blob> blob_store::lookup(const std::string& digest) {
  auto e = index_->get(digest);
  if (!e) return nullptr;
  error_code ec;
  const int fd = fs_->open_read(blob_path(digest), ec);
  if (ec) {
    // Indexed but gone (removed by hand, or a crash between index and rename):
    // forget it, it is a miss.
    log::warn("cache_index_stale", {{"digest", digest}, {"error", ec.message()}});
    index_->erase(digest);
    std::lock_guard lock(mu_);
    usage_.bytes -= std::min(usage_.bytes, e->size);
    usage_.blobs -= std::min<std::uint64_t>(usage_.blobs, 1);
    return nullptr;
  }
  const auto now = unix_now();
  std::lock_guard lock(mu_);  // the touch is a read-modify-write, like add_source
  if (now - e->last_access >= k_touch_interval) {
    if (auto fresh = index_->get(digest)) {
      fresh->last_access = now;
      index_->put(digest, *fresh);
      e = std::move(fresh);
    }
  }
  ++open_readers_[digest];
  return std::make_shared<open_blob>(*this, digest, fd, *e);
}

void blob_store::reader_closed(const std::string& digest) {
  std::lock_guard lock(mu_);
  auto it = open_readers_.find(digest);
  if (it != open_readers_.end() && --it->second <= 0) open_readers_.erase(it);
}

std::shared_ptr<fill> blob_store::join_or_start(const std::string& digest, const std::string& algorithm,
                                                bool& created) {
  std::lock_guard lock(mu_);
  auto& slot = fills_[digest];
  if (auto f = slot.lock()) {
    created = false;
    return f;
  }
  auto f = std::make_shared<fill>(*this, digest, algorithm);
  slot = f;
  created = true;
  return f;
}

void blob_store::fill_ended(const std::string& digest) {
  std::lock_guard lock(mu_);
  auto it = fills_.find(digest);
  if (it != fills_.end()) {
    auto f = it->second.lock();
    // Only drop the entry if it is this fill's (a failed fill may already have been
    // replaced by a new one for the same digest).
    if (!f || f->snapshot().failure != fill_failure::none || f->snapshot().verified) fills_.erase(it);
  }
}

bool blob_store::publish(const std::string& digest, const std::string& temp_path, std::uint64_t size,
                         const std::string& media_type, const std::string& source) {
  const auto path = blob_path(digest);
  if (index_->get(digest)) {
    // Published meanwhile by another fill (a lookup raced with its end): same bytes.
    fs_->remove(temp_path);
    if (!source.empty()) add_source(digest, source);
    return true;
  }
  error_code ec;
  fs_->make_dirs(path.substr(0, path.rfind('/')), ec);
  if (!ec) fs_->rename(temp_path, path, ec);
  if (ec) return false;
  const auto now = unix_now();
  // Renamed before indexed: a crash in between leaves a verified file the index does
  // not know, never an index entry without its file.
  blob_entry entry{size, media_type, now, now, {}};
  if (!source.empty()) entry.sources.push_back(source);
  if (!index_->put(digest, entry)) return false;
  usage u;
  {
    std::lock_guard lock(mu_);
    usage_.bytes += size;
    ++usage_.blobs;
    u = usage_;
  }
  metrics_.cache_usage(u.bytes, u.blobs);
  if (u.limit > 0 && u.bytes > u.limit) {
    evict_to(static_cast<std::uint64_t>(static_cast<double>(u.limit) * options_.low_watermark));
  }
  return true;
}

void blob_store::disk_failed() {
  metrics_.cache_disk_error();
  bool first = false;
  {
    std::lock_guard lock(mu_);
    first = std::chrono::steady_clock::now() >= unwritable_until_;
    unwritable_until_ = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  }
  // Logged once per outage; pulls go on, streamed from upstream without caching.
  if (first) log::error("cache_unwritable", {{"dir", options_.dir}, {"detail", "streaming without caching for 30 s"}});
}

bool blob_store::writable() const {
  std::lock_guard lock(mu_);
  return std::chrono::steady_clock::now() >= unwritable_until_;
}

blob_store::usage blob_store::current_usage() const {
  std::lock_guard lock(mu_);
  return usage_;
}

std::uint64_t blob_store::evict_to(std::uint64_t target) {
  struct candidate {
    std::string digest;
    blob_entry entry;
  };
  std::vector<candidate> all;
  index_->for_each([&](const std::string& d, const blob_entry& e) { all.push_back({d, e}); });
  std::sort(all.begin(), all.end(),
            [](const candidate& a, const candidate& b) { return a.entry.last_access < b.entry.last_access; });
  std::uint64_t freed = 0;
  std::uint64_t count = 0;
  for (const auto& c : all) {
    {
      std::lock_guard lock(mu_);
      if (usage_.bytes <= target) break;
      // Never from under a reader or a fill.
      if (open_readers_.contains(c.digest) || fills_.contains(c.digest)) continue;
      usage_.bytes -= std::min(usage_.bytes, c.entry.size);
      usage_.blobs -= std::min<std::uint64_t>(usage_.blobs, 1);
    }
    index_->erase(c.digest);
    fs_->remove(blob_path(c.digest));
    freed += c.entry.size;
    ++count;
  }
  if (count > 0) {
    const auto u = current_usage();
    metrics_.cache_eviction(count, freed);
    metrics_.cache_usage(u.bytes, u.blobs);
    log::info("cache_evicted", {{"blobs", count}, {"bytes", freed}, {"remaining_bytes", u.bytes}, {"target", target}});
  }
  return freed;
}

blob_store::verify_report blob_store::verify(
    const std::function<void(const std::string&, const std::string&)>& on_bad) {
  std::vector<std::pair<std::string, blob_entry>> all;
  index_->for_each([&](const std::string& d, const blob_entry& e) { all.emplace_back(d, e); });
  verify_report report;
  std::vector<char> buf(1 << 20);
  for (const auto& [digest, entry] : all) {
    ++report.checked;
    std::string problem;
    error_code ec;
    const int fd = fs_->open_read(blob_path(digest), ec);
    if (ec) {
      problem = "file missing (" + ec.message() + ")";
    } else {
      core::hasher h(digest.substr(0, digest.find(':')));
      std::uint64_t offset = 0;
      while (true) {
        const auto n = fs_->pread(fd, buf.data(), buf.size(), offset, ec);
        if (ec || n == 0) break;
        h.update(buf.data(), n);
        offset += n;
      }
      fs_->close(fd);
      report.bytes += offset;
      if (ec) {
        problem = "unreadable (" + ec.message() + ")";
      } else if (offset != entry.size) {
        problem = "size " + std::to_string(offset) + ", indexed " + std::to_string(entry.size);
      } else if (const auto got = h.finish(); got != digest) {
        problem = "content hashes to " + got;
      }
    }
    if (problem.empty()) continue;
    ++report.bad;
    on_bad(digest, problem);
    metrics_.digest_mismatch("cache", "verify");
    index_->erase(digest);
    fs_->remove(blob_path(digest));
    std::lock_guard lock(mu_);
    usage_.bytes -= std::min(usage_.bytes, entry.size);
    usage_.blobs -= std::min<std::uint64_t>(usage_.blobs, 1);
  }
  return report;
}

// ---------------------------------------------------------------------------
// body sources

namespace {

class published_body final : public core::body_source {
 public:
  published_body(std::shared_ptr<open_blob> blob, std::uint64_t offset, std::uint64_t end)
      : blob_(std::move(blob)), offset_(offset), end_(end), start_(offset) {}
  ~published_body() override { blob_->store().metrics().cache_bytes("cache", offset_ - start_); }

  std::optional<std::uint64_t> size() const override { return end_ - start_; }
  std::optional<core::file_span> file() const override { return core::file_span{blob_->fd(), offset_, end_ - offset_}; }
  void sent(std::uint64_t n) override { offset_ += n; }

  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    ec = {};
    if (offset_ >= end_) co_return 0;
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end_ - offset_));
    const auto n = blob_->store().fs().pread(blob_->fd(), buf.data(), want, offset_, ec);
    if (!ec && n == 0) ec = boost::system::errc::make_error_code(boost::system::errc::io_error);  // file shrank
    if (ec) co_return 0;
    offset_ += n;
    co_return n;
  }

 private:
  std::shared_ptr<open_blob> blob_;
  std::uint64_t offset_;
  std::uint64_t end_;
  std::uint64_t start_;
};

// Follows a fill: reads what has been written, waits for more, and releases the
// blob's last byte only after the fill verified it. If the fill fails because the
// cache disk is full, it carries on from the upstream (`on_disk_failure`) and checks
// the digest itself, so the client still gets one verified body.
class following_body final : public core::body_source {
 public:
  following_body(std::shared_ptr<fill> f, int fd, std::uint64_t offset, std::uint64_t end,
                 std::chrono::milliseconds stall, upstream_resume on_disk_failure)
      : fill_(std::move(f)),
        fd_(fd),
        offset_(offset),
        end_(end),
        start_(offset),
        stall_(stall),
        on_disk_failure_(std::move(on_disk_failure)) {}
  ~following_body() override {
    auto& store = fill_store();
    store.fs().close(fd_);
    store.metrics().cache_bytes("upstream", offset_ - start_);
  }

  std::optional<std::uint64_t> size() const override { return end_ - start_; }

  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    ec = {};
    if (upstream_) co_return co_await read_upstream(buf, ec);
    while (true) {
      const auto p = fill_->snapshot();
      if (p.failure == fill_failure::disk && on_disk_failure_) {
        if (co_await switch_to_upstream(p.size)) co_return co_await read_upstream(buf, ec);
      }
      if (p.failure != fill_failure::none) {
        ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
        co_return 0;
      }
      if (offset_ >= end_) co_return 0;
      const std::uint64_t readable = p.verified ? p.size : std::min(p.written, p.size > 0 ? p.size - 1 : 0);
      const auto limit = std::min(readable, end_);
      if (offset_ < limit) {
        const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), limit - offset_));
        const auto n = fill_store().fs().pread(fd_, buf.data(), want, offset_, ec);
        if (!ec && n == 0) ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
        if (ec) co_return 0;
        offset_ += n;
        co_return n;
      }
      const auto before = std::chrono::steady_clock::now();
      co_await fill_->wait_for_change(p.version, stall_);
      if (fill_->snapshot().version == p.version && std::chrono::steady_clock::now() - before >= stall_) {
        log::warn("cache_fill_stalled", {{"digest", fill_->digest()}, {"offset", offset_}});
        ec = boost::system::errc::make_error_code(boost::system::errc::timed_out);
        co_return 0;
      }
    }
  }

 private:
  blob_store& fill_store() { return fill_->store(); }

  asio::awaitable<bool> switch_to_upstream(std::uint64_t size) {
    // A whole-blob body is verified to the end: hash what was already sent (still in
    // the temp file this reader holds open), then everything that follows.
    if (start_ == 0 && end_ == size) {
      const auto& digest = fill_->digest();
      hasher_.emplace(digest.substr(0, digest.find(':')));
      std::vector<char> chunk(1 << 20);
      for (std::uint64_t at = 0; at < offset_;) {
        error_code ec;
        const auto n = fill_store().fs().pread(
            fd_, chunk.data(), static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), offset_ - at)), at, ec);
        if (ec || n == 0) co_return false;
        hasher_->update(chunk.data(), n);
        at += n;
      }
    }
    upstream_ = co_await on_disk_failure_(offset_, end_);
    log::warn("cache_follower_fallback",
              {{"digest", fill_->digest()}, {"offset", offset_}, {"ok", upstream_ != nullptr}});
    if (upstream_) fill_store().metrics().cache_disk_fallback();
    co_return upstream_ != nullptr;
  }

  asio::awaitable<std::size_t> read_upstream(asio::mutable_buffer buf, error_code& ec) {
    if (offset_ >= end_) co_return 0;
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end_ - offset_));
    const auto n = co_await upstream_->read(asio::buffer(buf.data(), want), ec);
    if (ec) co_return 0;
    if (n == 0) {
      ec = boost::system::errc::make_error_code(boost::system::errc::io_error);  // ended early
      co_return 0;
    }
    if (hasher_) {
      hasher_->update(buf.data(), n);
      if (offset_ + n == end_ && hasher_->finish() != fill_->digest()) {
        fill_store().metrics().digest_mismatch("cache", "blob_fallback");
        ec = boost::system::errc::make_error_code(boost::system::errc::io_error);  // withhold the last bytes
        co_return 0;
      }
    }
    offset_ += n;
    co_return n;
  }

  std::shared_ptr<fill> fill_;
  int fd_;
  std::uint64_t offset_;
  std::uint64_t end_;
  std::uint64_t start_;
  std::chrono::milliseconds stall_;
  upstream_resume on_disk_failure_;
  std::unique_ptr<core::body_source> upstream_;
  std::optional<core::hasher> hasher_;
};

}  // namespace

std::unique_ptr<core::body_source> blob_body(std::shared_ptr<open_blob> blob, std::uint64_t offset, std::uint64_t end) {
  return std::make_unique<published_body>(std::move(blob), offset, end);
}

std::unique_ptr<core::body_source> fill_body(std::shared_ptr<fill> f, int fd, std::uint64_t offset, std::uint64_t end,
                                             std::chrono::milliseconds stall, upstream_resume on_disk_failure) {
  return std::make_unique<following_body>(std::move(f), fd, offset, end, stall, std::move(on_disk_failure));
}

}  // namespace berth::store
