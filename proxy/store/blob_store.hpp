#pragma once
// The node-local blob cache: content-addressed files under <dir>/blobs/<alg>/<xx>/<hex>,
// published only after their digest and length are verified (temp file in <dir>/tmp,
// fsync, rename), indexed in RocksDB (<dir>/index). One fill per digest at a time;
// every client of that digest, the first included, reads the growing temp file at its
// own pace, and the last byte is released only once the fill has verified the blob.
// Thread-safe: fills and readers may live on different worker threads.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/body_source.hpp"
#include "core/chunk_hash.hpp"
#include "core/hasher.hpp"
#include "core/reply.hpp"
#include "core/wakeup.hpp"
#include "store/disk_thread.hpp"
#include "store/filesystem.hpp"
#include "store/index.hpp"
#include "store/observer.hpp"
#include "store/options.hpp"

namespace berth::metrics {
class registry;
}

namespace berth::store {

enum class fill_failure {
  none,
  upstream_answer,  // the source answered with an error status (kept in fill::answer())
  upstream_broken,  // the body broke off or stalled
  digest_mismatch,  // the bytes did not hash to the digest (or the length was wrong)
  disk,             // the cache could not write (ENOSPC, EIO, ...)
};
std::string_view to_string(fill_failure f);

class blob_store;

class fill : public std::enable_shared_from_this<fill> {
 public:
  fill(blob_store& store, std::string digest, const std::string& algorithm);
  ~fill();

  // --- the writer: one coroutine ---
  // Opens the temp file for a body of `size` bytes (nullopt: the upstream did not
  // say; the size is then known once the body ends) fetched for `source`
  // ("<registry>/<repository>"). False on a disk error (the fill has failed).
  bool start(std::optional<std::uint64_t> size, std::string media_type, std::string source = {});
  // Writes and hashes; wakes the readers. False on a disk error (the fill has failed).
  // With `hold`, the bytes are kept from the readers until confirm_held() (bytes from
  // a source that vouches for them chunk by chunk, not checked yet). Held bytes never
  // cross into the next chunk (room_in_chunk()); while bytes are held, every append
  // is held.
  bool append(const char* data, std::size_t n, bool hold = false);
  // The held bytes checked out: the readers may have them.
  void confirm_held();
  // They did not: forgotten as if never appended (written() is back where the holding
  // began, where the next source continues).
  void drop_held();
  // Bytes held now, the index of the chunk they are in, and that chunk's hash (of all
  // of it appended so far: what was released before the holding began, if it began
  // inside the chunk, and the held bytes).
  std::uint64_t held() const { return held_; }
  std::uint64_t held_from() const { return appended_ - held_; }
  std::uint64_t held_chunk() const { return (appended_ - held_) / core::k_chunk_bytes; }
  core::chunk_digest held_digest() const { return chunk_.digest(); }
  // True when the bytes appended so far (held ones included) are the blob: its
  // digest, and its length when announced. Hashes a copy; the fill goes on as it was.
  bool verifies() const;
  // Bytes appended so far (held ones included): where a resumed source continues.
  std::uint64_t written() const { return appended_; }
  // Bytes left before the end of the current chunk.
  std::uint64_t room_in_chunk() const { return core::k_chunk_bytes - appended_ % core::k_chunk_bytes; }
  // Verifies (held bytes included), then releases the last byte to readers and hands
  // the rest (fsync, rename, directory fsync, index, eviction for room) to the
  // store's disk thread; new requests become hits once that is done. Returns why
  // verification failed, or none.
  fill_failure finish();
  // `answer`: what every client of the fill gets instead of the blob (the source's
  // error reply, without a stream).
  void fail(fill_failure why, std::shared_ptr<const core::reply> answer = nullptr);
  // The hashes of the chunks the readers may have in full (after finish(), every
  // chunk's). Thread-safe.
  std::vector<core::chunk_digest> chunk_digests() const;

  // --- readers ---
  struct progress {
    std::uint64_t version = 0;
    bool started = false;
    bool sized = true;          // false while the size is unknown (a chunked upstream body); set by finish()
    std::uint64_t size = 0;     // meaningful when sized
    std::uint64_t written = 0;  // what readers may have (held bytes are not counted)
    bool verified = false;
    fill_failure failure = fill_failure::none;
    std::string media_type;
  };
  progress snapshot() const;
  std::shared_ptr<const core::reply> answer() const;
  // Returns when anything changed since `seen_version`, or after `limit`.
  boost::asio::awaitable<void> wait_for_change(std::uint64_t seen_version, std::chrono::milliseconds limit);
  // Waits until the fill has started (and, with `need_size`, knows its size) or has
  // failed; returns the last progress seen, which is neither when nothing changed
  // for `stall` (answered() tells).
  boost::asio::awaitable<progress> wait_answered(bool need_size, std::chrono::milliseconds stall);
  static bool answered(const progress& p, bool need_size) {
    return p.failure != fill_failure::none || (p.started && (p.sized || !need_size));
  }
  // A reader's own descriptor on the temp file (valid across the rename).
  int open_for_read(boost::system::error_code& ec) const;
  const std::string& digest() const { return digest_; }
  blob_store& store() const { return store_; }
  // Who the upstream served this fill to; set by start().
  std::string source() const;

 private:
  void changed_locked(std::vector<std::shared_ptr<boost::asio::steady_timer>>& wake);
  // The disk half of finish(), on the disk thread.
  void publish_verified(const progress& p, std::string chunks);

  blob_store& store_;
  const std::string digest_;
  // Writer only:
  core::hasher hasher_;
  core::chunk_hasher chunk_;  // the current chunk's bytes
  // Both hashers where the holding began (drop_held goes back to them).
  core::hasher mark_;
  core::chunk_hasher chunk_mark_;
  bool rewound_ = false;  // the temp file may hold bytes past appended_
  std::uint64_t appended_ = 0;
  std::uint64_t held_ = 0;
  std::uint64_t claimed_ = 0;  // temp bytes claimed for a body of unknown size
  std::string temp_path_;
  int write_fd_ = -1;       // writer only
  bool published_ = false;  // writer only

  // Bytes this fill has counted toward the cache's usage while in its temp file (the
  // announced size at once, else as written), given back when it ends.
  void claim_temp(std::uint64_t n);
  void release_temp();

  mutable std::mutex mu_;  // guards everything below
  std::uint64_t temp_counted_ = 0;
  progress state_;
  std::vector<core::chunk_digest> chunks_;  // of the bytes readers may have
  std::string read_path_;                   // the temp file, then the published file
  std::string source_;
  std::shared_ptr<const core::reply> answer_;
  core::wakeup_list waiters_;
};

// An open, published blob. Counted as a reader so eviction leaves the blob alone.
// `unproven` when the file is not the one whose bytes were last hashed (changed on
// disk, adopted after a crash, or indexed by an older Berth): it must be hashed as
// it is served, and is dropped from the cache if the hash is wrong.
class open_blob {
 public:
  open_blob(blob_store& store, std::string digest, int fd, blob_entry entry, file_identity identity, bool unproven);
  ~open_blob();
  open_blob(const open_blob&) = delete;
  open_blob& operator=(const open_blob&) = delete;
  int fd() const { return fd_; }
  const blob_entry& entry() const { return entry_; }
  const std::string& digest() const { return digest_; }
  const file_identity& identity() const { return identity_; }
  bool unproven() const { return unproven_; }
  blob_store& store() { return store_; }

 private:
  blob_store& store_;
  std::string digest_;
  int fd_;
  blob_entry entry_;
  file_identity identity_;
  bool unproven_;
};

class blob_store {
 public:
  // Opens the RocksDB index under <dir>/index; tests pass `open_index` to wrap it.
  using index_opener = std::function<std::unique_ptr<index>(const std::string& path)>;
  blob_store(store_options options, std::shared_ptr<filesystem> fs, metrics::registry& metrics,
             index_opener open_index = nullptr);
  ~blob_store();

  // Creates the directories, removes temp files a previous run left and opens the
  // index, then reads every record's size and last access into the usage and the LRU
  // order (no directory scan). That read runs on the disk thread, first of its work:
  //  - `now`: open() returns once it is done, and throws if it could not finish.
  //  - `background`: open() returns at once (start-up time does not grow with the
  //    cache). Lookups, fills and hits work meanwhile: they read the index itself.
  //    Publishes and evictions run after the read (they are disk-thread work), and
  //    blobs dropped or hit meanwhile are merged into it. A read that cannot finish
  //    (an index read error) is logged and leaves the cache serving what it holds
  //    but caching nothing new (the usage would be short; a restart reads again).
  // Throws std::runtime_error when the cache cannot be opened.
  enum class index_load { now, background };
  void open(index_load load = index_load::now);
  // True once open()'s index read is done (the usage is whole).
  bool loaded() const;
  void wait_loaded() const;

  // Indexes published files the index does not know (a crash between rename and
  // index). They were verified before the rename; with no sources recorded, the
  // upstream confirms each repository before a hit is served. Returns how many were
  // adopted. Walks blobs/: run it off the start-up path (see start_reconcile).
  // Waits for open()'s index read first.
  std::uint64_t reconcile();
  // Runs reconcile() once on a background thread; join_background() waits for it.
  void start_reconcile();
  void join_background();
  // Tells `o` about every blob published, evicted or invalidated from now on. Call
  // before open().
  void subscribe(std::shared_ptr<observer> o);
  // Returns once the disk work handed over so far (publishes, evictions, removals)
  // is done.
  void flush();

  // A published blob, opened for reading; null on a miss. A hit refreshes the
  // blob's last access (at most once a minute). A file whose size is not the
  // indexed one is damaged: dropped, counted, a miss. `ec` is set (and null
  // returned) when the file exists but cannot be opened now (EMFILE, EIO), or the
  // index cannot be read: that is not a miss, and the entry stays.
  std::shared_ptr<open_blob> lookup(const std::string& digest, boost::system::error_code& ec);
  // The blob's bytes did not hash to its digest (or its file is not what the index
  // says): drop it from the index and the disk, count and log it. The next request
  // fills it again.
  void damaged(const std::string& digest, const std::string& problem);
  // A served blob hashed right: remember its file's identity so that later hits
  // need no hashing while the file stays the same.
  void proven(const open_blob& blob);
  // The index entry of a published blob (for HEAD), without opening it. An index
  // that cannot be read sets `*ec` (when given) and is counted; it is not a miss.
  std::optional<blob_entry> stat(const std::string& digest, boost::system::error_code* ec = nullptr);
  // Records that the upstream served `digest` to `source` ("<registry>/<repository>")
  // just now. Runs on the disk thread; the caller resumes once it is recorded.
  boost::asio::awaitable<void> confirm_source(const std::string& digest, const std::string& source);
  // The upstream refused `digest` to `source`: it is served there no more.
  boost::asio::awaitable<void> drop_source(const std::string& digest, const std::string& source);

  // The fill under way for `digest`, or a new one (`created`: the caller must run it).
  std::shared_ptr<fill> join_or_start(const std::string& digest, const std::string& algorithm, bool& created);
  // The fill under way for `digest`, or null: never starts one (another node asking
  // through the peer endpoint follows a fill, it does not cause one).
  std::shared_ptr<fill> join(const std::string& digest);

  // The digest of every published blob; nullopt until open()'s index read is done.
  std::optional<std::vector<std::string>> digests() const;

  struct usage {
    std::uint64_t bytes = 0;  // published blobs
    std::uint64_t blobs = 0;
    std::uint64_t limit = 0;  // 0: none
    std::uint64_t temp = 0;   // fills under way: counted toward the limit too
  };
  usage current_usage() const;
  // False for a while after a disk error: new blobs are then streamed without caching.
  bool writable() const;
  // Evicts least recently used blobs (skipping open ones) until at most `target`
  // bytes remain, on the calling thread (after open()'s index read). Returns the
  // bytes freed. The LRU order is kept in memory as blobs are published and read.
  std::uint64_t evict_to(std::uint64_t target);

  // Rehashes every published blob; removes (and reports through `on_bad`) the ones
  // that are missing or whose bytes no longer match their digest.
  struct verify_report {
    std::uint64_t checked = 0;
    std::uint64_t bad = 0;
    std::uint64_t bytes = 0;
    bool complete = true;  // false: the index could not be read to its end
  };
  verify_report verify(const std::function<void(const std::string& digest, const std::string& problem)>& on_bad);

  // A body is reading `digest` (a follower of its fill, which may be published
  // meanwhile): eviction leaves it alone until reader_closed.
  void reader_opened(const std::string& digest);
  void reader_closed(const std::string& digest);

  filesystem& fs() { return *fs_; }
  metrics::registry& metrics() { return metrics_; }
  const store_options& options() const { return options_; }
  std::string blob_path(const std::string& digest) const;

 private:
  friend class fill;
  friend class open_blob;
  std::string new_temp_path(const std::string& digest);
  // open()'s index read, on the disk thread.
  void load_index(index_load load);  // read_index, which cannot leave the store loading
  void read_index(index_load load);
  // Runs a one-record index write on the disk thread, or here while the index read holds it.
  boost::asio::awaitable<void> on_disk_thread(std::function<void()> task);
  // Legacy records rewritten, undecodable ones dropped (found by the index read).
  void repair_records(const std::vector<std::string>& stale);
  // A hit's last access, written to the index on the disk thread.
  void record_access(const std::string& digest, std::int64_t now);
  // index_->get, with a read error counted.
  std::optional<blob_entry> indexed(const std::string& digest, boost::system::error_code& ec);
  // Called by a fill that verified its temp file, on the disk thread: rename, index,
  // account, evict. `fd` is the temp file's open descriptor (its identity is
  // recorded after the rename).
  bool publish(const std::string& digest, const std::string& temp_path, int fd, std::uint64_t size,
               const std::string& media_type, const std::string& source, std::string chunks);
  void fill_ended(const std::string& digest);
  // Fills' temp bytes: counted toward max_size, evicting published blobs for room.
  void temp_claimed(std::uint64_t n);
  // Evicts when published and temp bytes together pass the limit (on the disk
  // thread: at once when called there, else queued, once).
  void make_room();
  void temp_released(std::uint64_t n);
  void disk_failed();
  // Drops an indexed blob from the index, the LRU and the usage, and tells the
  // observers why; false when it was not indexed.
  bool forget(const std::string& digest, std::string_view why);
  // The in-memory LRU order (guarded by mu_).
  void lru_put_locked(const std::string& digest, std::int64_t last_access, std::uint64_t size);
  void lru_erase_locked(const std::string& digest);
  // Sets the usage gauges (guarded by mu_).
  void report_usage_locked();
  void tell(const std::function<void(observer&)>& event);
  // Adds or refreshes one repository's confirmation, on the calling thread.
  void record_source(const std::string& digest, const std::string& source);

  store_options options_;
  std::shared_ptr<filesystem> fs_;
  metrics::registry& metrics_;
  index_opener open_index_;
  std::unique_ptr<index> index_;
  int dir_lock_ = -1;  // flock on the cache directory: one Berth (or CLI) per cache

  mutable std::mutex mu_;  // guards everything below
  std::unordered_map<std::string, std::weak_ptr<fill>> fills_;
  std::unordered_map<std::string, int> open_readers_;
  usage usage_;
  std::uint64_t temp_counter_ = 0;
  std::chrono::steady_clock::time_point unwritable_until_{};
  // Published blobs by last access (unix seconds, then the order of the accesses),
  // oldest first, and each one's slot.
  using lru_key = std::pair<std::int64_t, std::uint64_t>;
  struct lru_slot {
    lru_key key;
    std::uint64_t size = 0;
  };
  std::map<lru_key, const std::string*> lru_;  // points at the digest, lru_slots_' key
  std::unordered_map<std::string, lru_slot> lru_slots_;
  std::uint64_t lru_sequence_ = 0;
  bool eviction_queued_ = false;
  // open()'s index read: under way, and what happened meanwhile to blobs it may have
  // read (dropped: not to be counted; hit: a newer last access).
  bool loading_ = false;
  bool index_incomplete_ = false;  // the read could not finish: nothing new is cached
  mutable std::condition_variable loaded_cv_;
  std::unordered_set<std::string> dropped_while_loading_;
  std::unordered_map<std::string, std::int64_t> hits_while_loading_;

  std::vector<std::shared_ptr<observer>> observers_;  // set before open(), read-only after
  std::thread reconciler_;
  // Last: destroyed first, after running what is queued (which uses everything above).
  std::unique_ptr<disk_thread> disk_;
};

// Body sources over the store: a published blob, and a fill under way.
std::unique_ptr<core::body_source> blob_body(std::shared_ptr<open_blob> blob, std::uint64_t offset, std::uint64_t end);
// Where a follower continues when its fill fails for lack of disk: a body source for
// bytes [offset, end) of the blob straight from the upstream (end nullopt: to the
// end of the blob), or null.

// `end` is nullopt for a whole body whose size the fill does not know yet.
using upstream_resume = std::function<boost::asio::awaitable<std::unique_ptr<core::body_source>>(
    std::uint64_t offset, std::optional<std::uint64_t> end)>;

std::unique_ptr<core::body_source> fill_body(std::shared_ptr<fill> f, int fd, std::uint64_t offset,
                                             std::optional<std::uint64_t> end, std::chrono::milliseconds stall,
                                             upstream_resume on_disk_failure = {});

}  // namespace berth::store
