#include "store/blob_store.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/errc.hpp>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "core/verifying_body.hpp"
#include "metrics/metrics.hpp"

namespace berth::store {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// "sha256:abcd..." -> ("sha256", "abcd...")
// a + sep + b, in one allocation.
std::string joined(const std::string& a, char sep, const std::string& b) {
  std::string out;
  out.reserve(a.size() + 1 + b.size());
  out.append(a).push_back(sep);
  out.append(b);
  return out;
}

std::pair<std::string, std::string> split_digest(const std::string& digest) {
  const auto colon = digest.find(':');
  return {digest.substr(0, colon), digest.substr(colon + 1)};
}

constexpr std::int64_t k_touch_interval = 60;  // seconds between last-access updates of one blob

std::int64_t ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t).count();
}

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

fill::fill(blob_store& store, std::string digest, const std::string& algorithm)
    : store_(store), digest_(std::move(digest)), hasher_(algorithm), mark_(algorithm) {}

fill::~fill() {
  release_temp();
  if (write_fd_ >= 0) store_.fs().close(write_fd_);
  if (!published_ && !temp_path_.empty()) store_.fs().remove(temp_path_);
  store_.fill_ended(digest_);
}

void fill::changed_locked(std::vector<std::shared_ptr<asio::steady_timer>>& wake) {
  ++state_.version;
  wake = waiters_.take();
}

void fill::claim_temp(std::uint64_t n) {
  {
    std::lock_guard lock(mu_);
    temp_counted_ += n;
  }
  store_.temp_claimed(n);
}

void fill::release_temp() {
  std::uint64_t n = 0;
  {
    std::lock_guard lock(mu_);
    n = std::exchange(temp_counted_, 0);
  }
  if (n > 0) store_.temp_released(n);
}

std::string fill::source() const {
  std::lock_guard lock(mu_);
  return source_;
}

bool fill::start(std::optional<std::uint64_t> size, std::string media_type, std::string source) {
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
    state_.sized = size.has_value();
    state_.size = size.value_or(0);
    state_.media_type = std::move(media_type);
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
  if (size) claim_temp(*size);  // room for all of it now, not as it trickles in
  return true;
}

bool fill::append(const char* data, std::size_t n, bool hold) {
  const auto p = snapshot();
  const std::uint64_t offset = appended_;
  if (p.sized && offset + n > p.size) {
    // More bytes than announced: the upstream is wrong about this blob.
    store_.metrics().digest_mismatch("cache", "blob_length");
    log::error("digest_mismatch", {{"kind", "blob_length"}, {"expected", digest_}, {"announced", p.size}});
    fail(fill_failure::digest_mismatch);
    return false;
  }
  hold = hold || held_ > 0;
  if (hold && n > room_in_chunk()) throw std::logic_error("held bytes would cross a chunk boundary");
  if (hold && held_ == 0) {
    mark_ = hasher_.clone();
    chunk_mark_ = chunk_.clone();
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
  // Hashed chunk by chunk: each chunk's hash as it completes.
  std::vector<core::chunk_digest> completed;
  for (std::size_t at = 0; at < n;) {
    const auto piece = static_cast<std::size_t>(std::min<std::uint64_t>(n - at, room_in_chunk()));
    hasher_.update(data + at, piece);
    chunk_.update(data + at, piece);
    at += piece;
    appended_ += piece;
    if (!hold && appended_ % core::k_chunk_bytes == 0) {
      completed.push_back(chunk_.digest());
      chunk_.reset();
    }
  }
  if (hold) held_ += n;
  if (!p.sized && appended_ > claimed_) {
    claim_temp(appended_ - claimed_);
    claimed_ = appended_;
  }
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    if (!hold) state_.written = appended_;
    chunks_.insert(chunks_.end(), completed.begin(), completed.end());
    changed_locked(wake);  // held bytes too: progress, though nothing new to read
  }
  core::wakeup_list::wake(wake);
  return true;
}

void fill::confirm_held() {
  if (held_ == 0) return;
  held_ = 0;
  std::optional<core::chunk_digest> completed;
  if (appended_ % core::k_chunk_bytes == 0) {
    completed = chunk_.digest();
    chunk_.reset();
  }
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    state_.written = appended_;
    if (completed) chunks_.push_back(*completed);
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
}

void fill::drop_held() {
  if (held_ == 0) return;
  // The hashers go back to where the holding began; the bytes past it in the temp
  // file are written again (or cut off before the publish).
  appended_ -= held_;
  held_ = 0;
  hasher_ = std::move(mark_);
  mark_ = hasher_.clone();
  chunk_ = std::move(chunk_mark_);
  chunk_mark_ = chunk_.clone();
  rewound_ = true;
}

bool fill::verifies() const {
  const auto p = snapshot();
  return (!p.sized || appended_ == p.size) && hasher_.clone().finish() == digest_;
}

std::vector<core::chunk_digest> fill::chunk_digests() const {
  std::lock_guard lock(mu_);
  return chunks_;
}

fill_failure fill::finish() {
  const auto p = snapshot();
  if (p.failure != fill_failure::none) return p.failure;
  // The last chunk's hash: a partial one, or a whole one still held.
  std::optional<core::chunk_digest> last;
  if (held_ > 0 || appended_ % core::k_chunk_bytes != 0) last = chunk_.digest();
  const auto got = hasher_.finish();
  if (got != digest_ || (p.sized && appended_ != p.size)) {
    store_.metrics().digest_mismatch("cache", "blob");
    log::error("digest_mismatch",
               {{"kind", "blob"}, {"expected", digest_}, {"got", got}, {"bytes", appended_}, {"announced", p.size}});
    fail(fill_failure::digest_mismatch);
    return fill_failure::digest_mismatch;
  }
  held_ = 0;
  // The bytes are proven right: the clients following this fill may have the last
  // one now. Durability (fsync, rename, index) is the cache's business, not theirs;
  // new requests become hits only once it is done.
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  progress done;
  std::string chunks;
  {
    std::lock_guard lock(mu_);
    if (last) chunks_.push_back(*last);
    state_.written = appended_;
    state_.verified = true;
    state_.sized = true;
    state_.size = appended_;
    changed_locked(wake);
    done = state_;
    // Kept with the blob only when a peer can use them: a blob of one chunk is
    // checked by its digest at the same point.
    if (chunks_.size() > 1) chunks = core::to_hex(chunks_);
  }
  core::wakeup_list::wake(wake);
  store_.disk_->post([self = shared_from_this(), done, chunks = std::move(chunks)]() mutable {
    self->publish_verified(done, std::move(chunks));
  });
  return fill_failure::none;
}

void fill::publish_verified(const progress& p, std::string chunks) {
  error_code ec;
  // A held tail dropped and sent shorter again: what is past the blob goes.
  if (rewound_) store_.fs().truncate(write_fd_, p.written, ec);
  if (!ec) store_.fs().fsync(write_fd_, ec);
  release_temp();  // publishing counts the bytes as a blob's
  const bool published =
      !ec && store_.publish(digest_, temp_path_, write_fd_, p.written, p.media_type, source(), std::move(chunks));
  store_.fs().close(write_fd_);
  write_fd_ = -1;
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
}

void fill::fail(fill_failure why, std::shared_ptr<const core::reply> answer) {
  std::vector<std::shared_ptr<asio::steady_timer>> wake;
  {
    std::lock_guard lock(mu_);
    if (state_.failure != fill_failure::none || state_.verified) return;
    state_.failure = why;
    answer_ = std::move(answer);
    changed_locked(wake);
  }
  core::wakeup_list::wake(wake);
  release_temp();
  store_.metrics().cache_fill(std::string("failed_") + std::string(to_string(why)));
  if (why == fill_failure::disk) store_.disk_failed();
  // Leave the in-flight map at once, so the next request starts afresh.
  store_.fill_ended(digest_);
}

fill::progress fill::snapshot() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::shared_ptr<const core::reply> fill::answer() const {
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

asio::awaitable<fill::progress> fill::wait_answered(bool need_size, std::chrono::milliseconds stall) {
  auto p = snapshot();
  while (!answered(p, need_size)) {
    co_await wait_for_change(p.version, stall);
    auto next = snapshot();
    if (next.version == p.version) break;  // no answer within the stall limit
    p = std::move(next);
  }
  co_return p;
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

open_blob::open_blob(blob_store& store, std::string digest, int fd, blob_entry entry, file_identity identity,
                     bool unproven)
    : store_(store),
      digest_(std::move(digest)),
      fd_(fd),
      entry_(std::move(entry)),
      identity_(identity),
      unproven_(unproven) {}

open_blob::~open_blob() {
  store_.fs().close(fd_);
  store_.reader_closed(digest_);
}

// ---------------------------------------------------------------------------
// blob_store

blob_store::blob_store(store_options options, std::shared_ptr<filesystem> fs, metrics::registry& metrics,
                       index_opener open_index)
    : options_(std::move(options)),
      fs_(std::move(fs)),
      metrics_(metrics),
      open_index_(std::move(open_index)),
      disk_(std::make_unique<disk_thread>(metrics)) {}

blob_store::~blob_store() {
  join_background();
  // What is queued runs first, with the disk thread still there for what it posts (the
  // index read's eviction, a publish's): reset() would clear the pointer first.
  disk_->flush();
  disk_.reset();
  if (dir_lock_ >= 0) fs_->close(dir_lock_);
}

void blob_store::subscribe(std::shared_ptr<observer> o) {
  observers_.push_back(std::move(o));
}

void blob_store::tell(const std::function<void(observer&)>& event) {
  for (const auto& o : observers_) event(*o);
}

void blob_store::flush() {
  disk_->flush();
}

void blob_store::lru_put_locked(const std::string& digest, std::int64_t last_access, std::uint64_t size) {
  const lru_key key{last_access, ++lru_sequence_};
  auto [it, fresh] = lru_slots_.try_emplace(digest, lru_slot{key, size});
  if (!fresh) {
    lru_.erase(it->second.key);
    it->second = {key, size};
  }
  lru_.emplace(key, &it->first);  // a node's key stays put until the node is erased
}

std::optional<std::vector<std::string>> blob_store::digests() const {
  std::lock_guard lock(mu_);
  if (loading_) return std::nullopt;
  std::vector<std::string> out;
  out.reserve(lru_slots_.size());
  for (const auto& slot : lru_slots_) out.push_back(slot.first);
  return out;
}

void blob_store::report_usage_locked() {
  // Under the lock: set from two threads' snapshots, the gauges could end up on the
  // older one (an index read ending as a reconcile adopts).
  metrics_.cache_usage(usage_.bytes, usage_.blobs, usage_.limit);
  metrics_.cache_temp_bytes(usage_.temp);
}

void blob_store::lru_erase_locked(const std::string& digest) {
  const auto it = lru_slots_.find(digest);
  if (it == lru_slots_.end()) return;
  lru_.erase(it->second.key);
  lru_slots_.erase(it);
}

std::uint64_t blob_store::reconcile() {
  // Adopting adds to the usage and the order the read builds; and the removals of
  // blobs found damaged during the read are queued behind it (not to be adopted).
  wait_loaded();
  disk_->flush();
  std::uint64_t adopted = 0;
  const auto root = options_.dir + "/blobs";
  for (const auto& alg : fs_->list(root)) {
    const auto alg_dir = joined(root, '/', alg);
    for (const auto& prefix : fs_->list(alg_dir)) {
      const auto prefix_dir = joined(alg_dir, '/', prefix);
      for (const auto& hex : fs_->list(prefix_dir)) {
        const auto digest = joined(alg, ':', hex);
        {
          std::lock_guard lock(mu_);
          if (fills_.contains(digest)) continue;  // being published right now: its fill indexes it
        }
        error_code ec;
        if (hex.rfind(prefix, 0) != 0 || indexed(digest, ec) || ec) continue;
        const auto size = fs_->file_size(joined(prefix_dir, '/', hex));
        if (!size) continue;
        const auto now = unix_now();
        if (!index_->put(digest, blob_entry{*size, "application/octet-stream", now, now, {}, std::nullopt, {}}))
          continue;
        ++adopted;
        {
          std::lock_guard lock(mu_);
          usage_.bytes += *size;
          ++usage_.blobs;
          lru_put_locked(digest, now, *size);
          report_usage_locked();
        }
        tell([&](observer& o) { o.published(digest, *size); });
      }
    }
  }
  if (adopted > 0) {
    const auto u = current_usage();
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

void blob_store::open(index_load load) {
  error_code ec;
  fs_->make_dirs(options_.dir, ec);
  if (ec) throw std::runtime_error("cache dir " + options_.dir + ": " + ec.message());
  // The directory itself is locked, not a file inside it: deleting index/ or tmp/
  // under a running Berth cannot let a second one in to remove the first one's
  // temp files.
  dir_lock_ = fs_->lock_dir(options_.dir, ec);
  if (ec) {
    throw std::runtime_error("cache dir " + options_.dir + ": " +
                             (ec == boost::system::errc::operation_would_block
                                  ? std::string("in use by another Berth (or berth cache verify/gc)")
                                  : "cannot lock: " + ec.message()));
  }
  for (const char* sub : {"/blobs", "/tmp", "/index"}) {
    fs_->make_dirs(options_.dir + sub, ec);
    if (ec) throw std::runtime_error("cache dir " + options_.dir + sub + ": " + ec.message());
  }
  const auto began = std::chrono::steady_clock::now();
  index_ = open_index_ ? open_index_(options_.dir + "/index") : index::open(options_.dir + "/index");
  const auto index_open_ms = ms_since(began);
  // Temp files are fills a previous run did not finish: never served, never kept.
  std::size_t removed = 0;
  for (const auto& name : fs_->list(options_.dir + "/tmp")) {
    fs_->remove(options_.dir + "/tmp/" + name);
    ++removed;
  }
  const auto limit = options_.limit_for(fs_->capacity(options_.dir));
  {
    std::lock_guard lock(mu_);
    usage_.limit = limit;
    loading_ = true;
  }
  log::info("cache_opened", {{"dir", options_.dir},
                             {"limit", limit},
                             {"temp_files_removed", removed},
                             {"index_open_ms", index_open_ms},
                             {"index_read", load == index_load::now ? "now" : "background"}});
  disk_->post([this, load] { load_index(load); });
  if (load == index_load::now) {
    wait_loaded();
    std::lock_guard lock(mu_);
    if (index_incomplete_)
      throw std::runtime_error("cache index " + options_.dir + "/index: read error while summing it (see the log)");
  }
}

void blob_store::load_index(index_load load) {
  try {
    read_index(load);
  } catch (const std::exception& e) {
    // Whatever stopped it (memory, a throwing index), nobody may wait for it forever.
    {
      std::lock_guard lock(mu_);
      if (!loading_) return;
      index_incomplete_ = true;
      loading_ = false;
      dropped_while_loading_ = {};
      hits_while_loading_ = {};
    }
    metrics_.cache_index_error();  // before waiters wake: what they see is counted
    loaded_cv_.notify_all();
    log::error("cache_index_incomplete", {{"dir", options_.dir}, {"error", e.what()}});
  }
}

void blob_store::read_index(index_load load) {
  const auto began = std::chrono::steady_clock::now();
  // Sizes for the usage, last accesses for the LRU order. The order is built from the
  // sorted read in one go (a reserved table, the tree filled from its end), not entry
  // by entry, and outside the lock: nothing else adds to it until the read is done
  // (publishes are disk-thread work, queued behind this).
  struct scanned {
    std::string digest;
    std::int64_t last_access;
    std::uint64_t size;
  };
  std::vector<scanned> all;
  std::vector<std::string> stale;  // legacy or undecodable records, repaired after the read
  const bool whole = index_->for_each(
      [&](const std::string& digest, const blob_entry& e) {
        all.push_back({digest, e.last_access, e.size});
      },
      &stale);
  repair_records(stale);
  std::stable_sort(all.begin(), all.end(),
                   [](const scanned& a, const scanned& b) { return a.last_access < b.last_access; });
  std::map<lru_key, const std::string*> lru;
  std::unordered_map<std::string, lru_slot> slots;
  slots.reserve(all.size());
  std::uint64_t sequence = 0, bytes = 0;
  for (auto& b : all) {
    const lru_key key{b.last_access, ++sequence};
    auto [it, fresh] = slots.try_emplace(std::move(b.digest), lru_slot{key, b.size});
    if (!fresh) continue;
    lru.emplace_hint(lru.end(), key, &it->first);
    bytes += b.size;
  }
  all = {};
  usage u;
  {
    // Merged with what happened while it ran: blobs dropped meanwhile are not
    // counted, blobs hit meanwhile move to the young end.
    std::lock_guard lock(mu_);
    for (const auto& digest : dropped_while_loading_) {
      if (const auto it = slots.find(digest); it != slots.end()) {
        bytes -= it->second.size;
        lru.erase(it->second.key);
        slots.erase(it);
      }
    }
    lru_ = std::move(lru);
    lru_slots_ = std::move(slots);
    lru_sequence_ = std::max(lru_sequence_, sequence);
    for (const auto& [digest, at] : hits_while_loading_) {
      if (const auto it = lru_slots_.find(digest); it != lru_slots_.end() && at > it->second.key.first)
        lru_put_locked(digest, at, it->second.size);
    }
    usage_.bytes += bytes;
    usage_.blobs += lru_slots_.size();
    dropped_while_loading_ = {};
    hits_while_loading_ = {};
    index_incomplete_ = !whole;
    loading_ = false;
    report_usage_locked();
    u = usage_;
  }
  if (!whole) metrics_.cache_index_error();  // before waiters wake: what they see is counted
  loaded_cv_.notify_all();
  log::info("cache_index_read", {{"blobs", u.blobs}, {"bytes", u.bytes}, {"ms", ms_since(began)}, {"complete", whole}});
  if (!whole) {
    log::error("cache_index_incomplete",
               {{"dir", options_.dir},
                {"detail",
                 "serving what is cached, caching nothing new (the usage would be short); a restart reads the "
                 "index again; if it keeps failing, stop Berth and move <cache dir>/index away: the next start "
                 "adopts every blob again"}});
  }
  // Serving already: fills may have claimed room meanwhile, and a limit lowered since
  // the last run applies now. (Opened `now`, the caller decides: berth cache gc.)
  if (load == index_load::background) make_room();
}

void blob_store::repair_records(const std::vector<std::string>& stale) {
  // Each one under the lock, as every read-modify-write of a record is: a record the
  // read saw may have been dropped meanwhile (forget), and must stay dropped.
  std::uint64_t rewritten = 0, dropped = 0;
  for (const auto& digest : stale) {
    std::lock_guard lock(mu_);
    switch (index_->repair(digest)) {
      case index::repaired::rewritten: ++rewritten; break;
      case index::repaired::dropped: ++dropped; break;
      case index::repaired::nothing: break;
    }
  }
  if (rewritten > 0)
    log::info("cache_index_migrated", {{"records", rewritten}, {"detail", "rewritten in the current format"}});
  if (dropped > 0) log::warn("cache_index_dropped", {{"records", dropped}, {"detail", "could not be decoded"}});
}

bool blob_store::loaded() const {
  std::lock_guard lock(mu_);
  return !loading_;
}

void blob_store::wait_loaded() const {
  std::unique_lock lock(mu_);
  loaded_cv_.wait(lock, [this] { return !loading_; });
}

std::optional<blob_entry> blob_store::indexed(const std::string& digest, error_code& ec) {
  auto e = index_->get(digest, ec);
  if (ec) metrics_.cache_index_error();
  return e;
}

std::optional<blob_entry> blob_store::stat(const std::string& digest, error_code* ec) {
  error_code ignored;
  return indexed(digest, ec ? *ec : ignored);
}

asio::awaitable<void> blob_store::confirm_source(const std::string& digest, const std::string& source) {
  std::function<void()> task = [this, digest, source] { record_source(digest, source); };
  co_await on_disk_thread(std::move(task));
}

void blob_store::record_source(const std::string& digest, const std::string& source) {
  std::lock_guard lock(mu_);  // read-modify-write of one entry
  error_code ec;
  auto e = indexed(digest, ec);
  if (!e) return;  // gone, or unreadable: the next hit asks the upstream again
  const auto now = core::unix_ms();
  auto it =
      std::find_if(e->sources.begin(), e->sources.end(), [&](const store::source& s) { return s.name == source; });
  if (it != e->sources.end()) {
    it->confirmed = now;
  } else {
    e->sources.push_back({source, now});
  }
  index_->put(digest, *e);
}

asio::awaitable<void> blob_store::drop_source(const std::string& digest, const std::string& source) {
  std::function<void()> task = [this, digest, source] {
    std::lock_guard lock(mu_);
    error_code ec;
    auto e = indexed(digest, ec);
    if (!e) return;
    std::erase_if(e->sources, [&](const store::source& s) { return s.name == source; });
    index_->put(digest, *e);
  };
  co_await on_disk_thread(std::move(task));
}

asio::awaitable<void> blob_store::on_disk_thread(std::function<void()> task) {
  // A hit waits for this (its repository confirmed): while the index read holds the
  // disk thread, the one-record write runs here instead of after the whole read.
  if (!loaded()) {
    task();
    co_return;
  }
  co_await disk_->run(std::move(task));
}

std::shared_ptr<open_blob> blob_store::lookup(const std::string& digest, error_code& ec) {
  ec = {};
  // Counted as a reader before the index is read and the file opened: from here on
  // no eviction takes it.
  {
    std::lock_guard lock(mu_);
    ++open_readers_[digest];
  }
  bool handed_out = false;
  struct uncount {
    blob_store& s;
    const std::string& digest;
    bool& handed_out;
    ~uncount() {
      if (!handed_out) s.reader_closed(digest);
    }
  } guard{*this, digest, handed_out};
  auto e = indexed(digest, ec);
  if (!e) return nullptr;  // a miss, or (ec set) an index that cannot be read now
  const int fd = fs_->open_read(blob_path(digest), ec);
  if (ec == boost::system::errc::no_such_file_or_directory) {
    // Indexed but gone (removed by hand, or a crash between index and rename):
    // forget it, it is a miss.
    log::warn("cache_index_stale", {{"digest", digest}, {"error", ec.message()}});
    ec = {};
    forget(digest, "missing");
    return nullptr;
  }
  if (ec) {
    // Out of descriptors, an I/O error: the blob may be fine; say so, keep it.
    log::warn("cache_open_failed", {{"digest", digest}, {"error", ec.message()}});
    return nullptr;
  }
  const auto id = fs_->identify(fd, ec);
  if (ec || id.size != e->size) {
    fs_->close(fd);
    damaged(digest, ec ? "cannot stat: " + ec.message()
                       : "file is " + std::to_string(id.size) + " bytes, indexed " + std::to_string(e->size));
    ec = {};
    return nullptr;
  }
  const bool unproven = !e->verified_as || !e->verified_as->same_file_as(id);
  const auto now = unix_now();
  std::lock_guard lock(mu_);
  if (const auto slot = lru_slots_.find(digest);
      slot != lru_slots_.end() && now - slot->second.key.first >= k_touch_interval) {
    // A hit moves the blob to the young end of the LRU now; the index learns it on
    // the disk thread.
    lru_put_locked(digest, now, slot->second.size);
    e->last_access = now;
    record_access(digest, now);
  } else if (slot == lru_slots_.end() && loading_ && now - e->last_access >= k_touch_interval) {
    // Not in the order yet (open()'s index read is under way): the read merges it.
    if (auto& at = hits_while_loading_[digest]; now - at >= k_touch_interval) {
      at = now;
      e->last_access = now;
      record_access(digest, now);
    }
  }
  // The open_blob uncounts itself when the last holder lets go (the guard reads this).
  handed_out = true;  // NOLINT(clang-analyzer-deadcode.DeadStores)
  return std::make_shared<open_blob>(*this, digest, fd, *e, id, unproven);
}

void blob_store::record_access(const std::string& digest, std::int64_t now) {
  disk_->post([this, digest, now] {
    std::lock_guard lock(mu_);  // a read-modify-write, like record_source
    error_code ec;
    if (auto fresh = indexed(digest, ec); fresh && fresh->last_access < now) {
      fresh->last_access = now;
      index_->put(digest, *fresh);
    }
  });
}

bool blob_store::forget(const std::string& digest, std::string_view why) {
  {
    // Check and erase as one step: two that find the same blob gone (an eviction and
    // a reader, two readers) must not both take its size off the usage. The index
    // entry goes now (not on the disk thread), so no later lookup finds it.
    std::lock_guard lock(mu_);
    error_code ec;
    const auto e = indexed(digest, ec);
    if (!e) return false;
    index_->erase(digest);
    if (loading_) {
      // Not counted yet: open()'s index read, which may have read it, leaves it out.
      dropped_while_loading_.insert(digest);
    } else {
      lru_erase_locked(digest);
      usage_.bytes -= std::min(usage_.bytes, e->size);
      usage_.blobs -= std::min<std::uint64_t>(usage_.blobs, 1);
      report_usage_locked();
    }
  }
  tell([&](observer& o) { o.invalidated(digest, why); });
  return true;
}

void blob_store::damaged(const std::string& digest, const std::string& problem) {
  metrics_.digest_mismatch("cache", "damaged");
  log::error("cache_damaged",
             {{"digest", digest}, {"problem", problem}, {"detail", "dropped; the next request refills it"}});
  if (!forget(digest, "damaged")) return;  // dropped already (two readers found it at once)
  // Readers that have it open keep their descriptor; the name goes before any new
  // fill can publish good bytes under it (publishes run on the disk thread too, in order).
  disk_->post([this, path = blob_path(digest)] { fs_->remove(path); });
}

void blob_store::proven(const open_blob& blob) {
  error_code ec;
  const auto now = fs_->identify(blob.fd(), ec);
  if (ec || now.size != blob.identity().size || !now.same_file_as(blob.identity())) return;  // changed meanwhile
  disk_->post([this, digest = blob.digest(), now] {
    std::lock_guard lock(mu_);  // read-modify-write of one entry
    error_code ec;
    auto e = indexed(digest, ec);
    if (!e || e->size != now.size) return;
    e->verified_as = now;
    index_->put(digest, *e);
    log::info("cache_blob_proven", {{"digest", digest}});
  });
}

void blob_store::reader_opened(const std::string& digest) {
  std::lock_guard lock(mu_);
  ++open_readers_[digest];
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

std::shared_ptr<fill> blob_store::join(const std::string& digest) {
  std::lock_guard lock(mu_);
  const auto it = fills_.find(digest);
  return it == fills_.end() ? nullptr : it->second.lock();
}

void blob_store::temp_claimed(std::uint64_t n) {
  usage u;
  {
    std::lock_guard lock(mu_);
    usage_.temp += n;
    metrics_.cache_temp_bytes(usage_.temp);  // under the lock, as report_usage_locked
    u = usage_;
  }
  if (u.limit > 0 && u.bytes + u.temp > u.limit) make_room();
}

void blob_store::make_room() {
  if (!disk_->in_this_thread()) {
    {
      std::lock_guard lock(mu_);
      if (std::exchange(eviction_queued_, true)) return;  // one queued eviction is enough
    }
    disk_->post([this] {
      {
        std::lock_guard lock(mu_);
        eviction_queued_ = false;
      }
      make_room();
    });
    return;
  }
  const auto u = current_usage();
  if (u.limit == 0 || u.bytes + u.temp <= u.limit) return;
  // Down to the low watermark, with the bytes of fills under way counted.
  const auto low = static_cast<std::uint64_t>(static_cast<double>(u.limit) * options_.low_watermark);
  evict_to(low > u.temp ? low - u.temp : 0);
}

void blob_store::temp_released(std::uint64_t n) {
  std::lock_guard lock(mu_);
  usage_.temp -= std::min(usage_.temp, n);
  metrics_.cache_temp_bytes(usage_.temp);  // under the lock, as report_usage_locked
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

bool blob_store::publish(const std::string& digest, const std::string& temp_path, int fd, std::uint64_t size,
                         const std::string& media_type, const std::string& source, std::string chunks) {
  const auto path = blob_path(digest);
  error_code read_ec;
  if (indexed(digest, read_ec)) {
    // Published meanwhile by another fill (a lookup raced with its end): same bytes.
    fs_->remove(temp_path);
    if (!source.empty()) record_source(digest, source);
    return true;
  }
  error_code ec;
  const auto dir = path.substr(0, path.rfind('/'));
  fs_->make_dirs(dir, ec);
  if (!ec) fs_->rename(temp_path, path, ec);
  // The rename is durable once its directory is: a power cut must not lose a blob
  // the index already lists.
  if (!ec) fs_->fsync_dir(dir, ec);
  if (ec) return false;
  const auto now = unix_now();
  // Renamed before indexed: a crash in between leaves a verified file the index does
  // not know, never an index entry without its file.
  blob_entry entry{size, media_type, now, now, {}, std::nullopt, std::move(chunks)};
  if (!source.empty()) entry.sources.push_back({source, core::unix_ms()});
  // The bytes were hashed as they were written; this is the file they are in (after
  // the rename, which changes the ctime).
  if (const auto id = fs_->identify(fd, ec); !ec && id.size == size) entry.verified_as = id;
  ec = {};
  if (!index_->put(digest, entry)) return false;
  {
    std::lock_guard lock(mu_);
    usage_.bytes += size;
    ++usage_.blobs;
    lru_put_locked(digest, now, size);
    report_usage_locked();
  }
  tell([&](observer& o) { o.published(digest, size); });
  make_room();
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
  return !index_incomplete_ && std::chrono::steady_clock::now() >= unwritable_until_;
}

blob_store::usage blob_store::current_usage() const {
  std::lock_guard lock(mu_);
  return usage_;
}

std::uint64_t blob_store::evict_to(std::uint64_t target) {
  wait_loaded();
  // Oldest first from the in-memory LRU order; never from under a reader or a fill.
  std::vector<std::pair<std::string, std::uint64_t>> gone;
  {
    std::lock_guard lock(mu_);
    for (auto it = lru_.begin(); it != lru_.end() && usage_.bytes > target;) {
      const std::string digest = *it->second;
      if (open_readers_.contains(digest) || fills_.contains(digest)) {
        ++it;
        continue;
      }
      const auto size = lru_slots_.at(digest).size;
      index_->erase(digest);
      usage_.bytes -= std::min(usage_.bytes, size);
      usage_.blobs -= std::min<std::uint64_t>(usage_.blobs, 1);
      lru_slots_.erase(digest);
      it = lru_.erase(it);
      gone.emplace_back(digest, size);
    }
    report_usage_locked();
  }
  std::uint64_t freed = 0;
  for (const auto& blob : gone) {
    fs_->remove(blob_path(blob.first));
    freed += blob.second;
    tell([&blob](observer& o) { o.evicted(blob.first, blob.second); });
  }
  if (!gone.empty()) {
    const auto u = current_usage();
    metrics_.cache_eviction(gone.size(), freed);
    log::info("cache_evicted",
              {{"blobs", gone.size()}, {"bytes", freed}, {"remaining_bytes", u.bytes}, {"target", target}});
  }
  return freed;
}

blob_store::verify_report blob_store::verify(
    const std::function<void(const std::string&, const std::string&)>& on_bad) {
  std::vector<std::pair<std::string, blob_entry>> all;
  verify_report report;
  report.complete = index_->for_each([&](const std::string& d, const blob_entry& e) { all.emplace_back(d, e); });
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
      const auto id = fs_->identify(fd, ec);
      std::uint64_t offset = 0;
      while (!ec) {
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
      } else if (!entry.verified_as || !entry.verified_as->same_file_as(id)) {
        auto proven = entry;
        proven.verified_as = id;  // hits need not hash it again
        index_->put(digest, proven);
      }
    }
    if (problem.empty()) continue;
    ++report.bad;
    on_bad(digest, problem);
    metrics_.digest_mismatch("cache", "verify");
    if (forget(digest, "failed verification")) fs_->remove(blob_path(digest));
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

// A published blob whose file is not proven to hold its digest's bytes: it is
// hashed whole (the bytes before and after the client's range too) while the range
// is served, and the read that would complete the client's body is withheld unless
// the hash matches. A wrong file is dropped from the cache; a right one is
// remembered as proven, so later hits go back to sendfile.
class proving_body final : public core::body_source {
 public:
  proving_body(std::shared_ptr<open_blob> blob, std::uint64_t first, std::uint64_t end)
      : blob_(std::move(blob)),
        first_(first),
        end_(end),
        hasher_(blob_->digest().substr(0, blob_->digest().find(':'))) {}
  ~proving_body() override { blob_->store().metrics().cache_bytes("cache", sent_); }

  std::optional<std::uint64_t> size() const override { return end_ - first_; }

  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    ec = {};
    if (done_) co_return 0;
    // The bytes before the range: hashed, not sent.
    if (pos_ < first_ && !co_await hash_through(first_, ec)) co_return 0;
    std::size_t n = 0;
    if (pos_ < end_) {
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), end_ - pos_));
      n = pread(buf.data(), want, ec);
      if (ec) co_return 0;
      hasher_.update(buf.data(), n);
      pos_ += n;
    }
    if (pos_ == end_) {
      // These bytes complete the client's body: prove the whole file first.
      done_ = true;
      if (!co_await hash_through(blob_->entry().size, ec)) co_return 0;
      if (const auto got = hasher_.finish(); got != blob_->digest()) {
        blob_->store().damaged(blob_->digest(), "content hashes to " + got);
        ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
        co_return 0;
      }
      blob_->store().proven(*blob_);
    }
    sent_ += n;
    co_return n;
  }

 private:
  std::size_t pread(void* data, std::size_t want, error_code& ec) {
    const auto n = blob_->store().fs().pread(blob_->fd(), data, want, pos_, ec);
    if (!ec && n == 0) {
      // Shorter than its index entry: it shrank after it was opened.
      blob_->store().damaged(blob_->digest(), "file shrank to " + std::to_string(pos_) + " bytes while being read");
      ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
    }
    return ec ? 0 : n;
  }

  // Hashes the file up to `to` without sending it. A long stretch (a range near the
  // end of a large blob) yields to the event loop every few MiB, so the worker's
  // other connections, and the watchdog's heartbeat, are not held up behind it.
  asio::awaitable<bool> hash_through(std::uint64_t to, error_code& ec) {
    if (scratch_.empty()) scratch_.resize(256 * 1024);
    std::uint64_t since_yield = 0;
    while (pos_ < to) {
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(scratch_.size(), to - pos_));
      const auto n = pread(scratch_.data(), want, ec);
      if (ec) co_return false;
      hasher_.update(scratch_.data(), n);
      pos_ += n;
      if ((since_yield += n) >= (8U << 20)) {
        since_yield = 0;
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
      }
    }
    co_return true;
  }

  std::shared_ptr<open_blob> blob_;
  std::uint64_t first_;
  std::uint64_t end_;
  std::uint64_t pos_ = 0;  // next byte of the file to read
  std::uint64_t sent_ = 0;
  bool done_ = false;
  core::hasher hasher_;
  std::vector<char> scratch_;
};

// Follows a fill: reads what has been written, waits for more, and releases the
// blob's last byte only after the fill verified it. If the fill fails because the
// cache disk is full, it carries on from the upstream (`on_disk_failure`) and checks
// the digest itself, so the client still gets one verified body. `end` is unknown
// (nullopt) for a whole body whose upstream gave no length: the end is then the
// size the fill found once it verified the blob.
class following_body final : public core::body_source {
 public:
  following_body(std::shared_ptr<fill> f, int fd, std::uint64_t offset, std::optional<std::uint64_t> end,
                 std::chrono::milliseconds stall, upstream_resume on_disk_failure)
      : fill_(std::move(f)),
        fd_(fd),
        offset_(offset),
        end_(end),
        start_(offset),
        stall_(stall),
        on_disk_failure_(std::move(on_disk_failure)) {
    // Counted as a reader: once its fill is published, eviction must still spare it.
    fill_->store().reader_opened(fill_->digest());
  }
  ~following_body() override {
    auto& store = fill_store();
    store.reader_closed(fill_->digest());
    store.fs().close(fd_);
    store.metrics().cache_bytes("upstream", offset_ - start_);
  }

  std::optional<std::uint64_t> size() const override {
    if (!end_) return std::nullopt;
    return *end_ - start_;
  }

  asio::awaitable<std::size_t> read(asio::mutable_buffer buf, error_code& ec) override {
    ec = {};
    if (upstream_) {
      co_return co_await read_upstream(buf, ec);
    }
    while (true) {
      const auto p = fill_->snapshot();
      if (p.failure == fill_failure::disk && on_disk_failure_) {
        if (co_await switch_to_upstream(p)) co_return co_await read_upstream(buf, ec);
      }
      if (p.failure != fill_failure::none) {
        ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
        co_return 0;
      }
      const std::uint64_t end = end_ ? *end_ : (p.verified ? p.size : UINT64_MAX);
      if (offset_ >= end) co_return 0;
      // Everything written may be read, except the blob's last byte before the fill
      // verified it (with no known size: the last byte written so far).
      std::uint64_t readable = p.size;
      if (!p.verified) {
        readable = p.sized ? std::min(p.written, p.size > 0 ? p.size - 1 : 0) : (p.written > 0 ? p.written - 1 : 0);
      }
      const auto limit = std::min(readable, end);
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

  asio::awaitable<bool> switch_to_upstream(const fill::progress& p) {
    const auto& digest = fill_->digest();
    auto rest = co_await on_disk_failure_(offset_, end_);
    log::warn("cache_follower_fallback", {{"digest", digest}, {"offset", offset_}, {"ok", rest != nullptr}});
    if (!rest) co_return false;
    fill_store().metrics().cache_disk_fallback();
    const bool whole = start_ == 0 && (!end_ || (p.sized && *end_ == p.size));
    if (!whole) {
      upstream_ = std::move(rest);  // a range: its bytes alone cannot be checked
      co_return true;
    }
    // A whole-blob body is verified to the end: hash what was already sent (still in
    // the temp file this reader holds open), then let the rest stream through a
    // verifying body seeded with that prefix.
    core::hasher prefix(digest.substr(0, digest.find(':')));
    std::vector<char> chunk(1 << 20);
    for (std::uint64_t at = 0; at < offset_;) {
      error_code ec;
      const auto n = fill_store().fs().pread(
          fd_, chunk.data(), static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), offset_ - at)), at, ec);
      if (ec || n == 0) co_return false;
      prefix.update(chunk.data(), n);
      at += n;
    }
    std::optional<std::uint64_t> remaining;
    if (end_) remaining = *end_ - offset_;
    auto& metrics = fill_store().metrics();
    upstream_ = std::make_unique<core::verifying_body>(
        std::move(rest), digest, remaining,
        [&metrics, digest](const std::string& got) {
          metrics.digest_mismatch("cache", "blob_fallback");
          log::error("digest_mismatch", {{"kind", "blob_fallback"}, {"expected", digest}, {"got", got}});
        },
        std::move(prefix));
    co_return true;
  }

  asio::awaitable<std::size_t> read_upstream(asio::mutable_buffer buf, error_code& ec) {
    if (end_ && offset_ >= *end_) co_return 0;
    const auto want =
        end_ ? static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), *end_ - offset_)) : buf.size();
    const auto n = co_await upstream_->read(asio::buffer(buf.data(), want), ec);
    if (ec) co_return 0;
    if (n == 0 && end_ && offset_ < *end_) {
      ec = boost::system::errc::make_error_code(boost::system::errc::io_error);  // ended early
      co_return 0;
    }
    offset_ += n;
    co_return n;
  }

  std::shared_ptr<fill> fill_;
  int fd_;
  std::uint64_t offset_;
  std::optional<std::uint64_t> end_;
  std::uint64_t start_;
  std::chrono::milliseconds stall_;
  upstream_resume on_disk_failure_;
  std::unique_ptr<core::body_source> upstream_;
};

}  // namespace

std::unique_ptr<core::body_source> blob_body(std::shared_ptr<open_blob> blob, std::uint64_t offset, std::uint64_t end) {
  if (blob->unproven()) return std::make_unique<proving_body>(std::move(blob), offset, end);
  return std::make_unique<published_body>(std::move(blob), offset, end);
}

std::unique_ptr<core::body_source> fill_body(std::shared_ptr<fill> f, int fd, std::uint64_t offset,
                                             std::optional<std::uint64_t> end, std::chrono::milliseconds stall,
                                             upstream_resume on_disk_failure) {
  return std::make_unique<following_body>(std::move(f), fd, offset, end, stall, std::move(on_disk_failure));
}

}  // namespace berth::store
