#include "store/index.hpp"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <cstdarg>
#include <cstdio>

#include <atomic>
#include <boost/json.hpp>
#include <boost/system/errc.hpp>
#include <charconv>
#include <filesystem>
#include <stdexcept>
#include <string_view>
#include <type_traits>

#include "core/json_fields.hpp"
#include "core/log.hpp"
#include "core/media_types.hpp"

namespace berth::store {
namespace {

using core::get_int;

constexpr char k_version = 2;

// Version 1: "size created last_access media_type source...".
std::optional<blob_entry> decode_v1(std::string_view v) {
  blob_entry e;
  auto take = [&](auto& out) {
    const auto sp = v.find(' ');
    if (sp == std::string_view::npos) return false;
    auto r = std::from_chars(v.data(), v.data() + sp, out);
    if (r.ec != std::errc() || r.ptr != v.data() + sp) return false;
    v.remove_prefix(sp + 1);
    return true;
  };
  if (!take(e.size) || !take(e.created) || !take(e.last_access)) return std::nullopt;
  const auto type = v.substr(0, v.find(' '));
  e.media_type = core::media_type::valid(type) ? std::string(type) : "application/octet-stream";
  // The sources are not kept: a Content-Type with spaces could have planted one.
  return e;
}

}  // namespace

bool legacy_entry(std::string_view record) {
  return !record.empty() && record.front() >= '0' && record.front() <= '9';
}

std::string encode_entry(const blob_entry& e) {
  boost::json::object o;
  o["size"] = e.size;
  o["created"] = e.created;
  o["last_access"] = e.last_access;
  o["media_type"] = e.media_type;
  boost::json::array sources;
  for (const auto& s : e.sources) sources.push_back(boost::json::object{{"name", s.name}, {"confirmed", s.confirmed}});
  o["sources"] = std::move(sources);
  if (e.verified_as) {
    o["inode"] = e.verified_as->inode;
    o["ctime_ns"] = e.verified_as->ctime_ns;
  }
  if (!e.chunks.empty()) o["chunks"] = e.chunks;
  return std::string(1, k_version) + boost::json::serialize(o);
}

std::optional<blob_entry> decode_entry(std::string_view record) {
  if (legacy_entry(record)) return decode_v1(record);
  if (record.empty() || record.front() != k_version) return std::nullopt;
  // Parsed on the stack: a record is a few hundred bytes, and the start-up scan
  // decodes every one of them (heap allocations were most of its time).
  unsigned char temp[1024];
  unsigned char values[4096];
  boost::json::monotonic_resource arena(values, sizeof values);
  boost::json::parser parser(boost::json::storage_ptr(), {}, temp, sizeof temp);
  parser.reset(&arena);
  boost::system::error_code ec;
  parser.write(record.data() + 1, record.size() - 1, ec);
  if (ec) return std::nullopt;
  const auto doc = parser.release();
  if (!doc.is_object()) return std::nullopt;
  const auto& o = doc.get_object();
  blob_entry e;
  if (!get_int(o, "size", e.size) || !get_int(o, "created", e.created) || !get_int(o, "last_access", e.last_access))
    return std::nullopt;
  const auto* type = o.if_contains("media_type");
  if (type == nullptr || !type->is_string() || !core::media_type::valid(type->get_string())) return std::nullopt;
  e.media_type = std::string(type->get_string());
  if (const auto* sources = o.if_contains("sources")) {
    if (!sources->is_array()) return std::nullopt;
    for (const auto& s : sources->get_array()) {
      source src;
      if (s.is_string()) {  // before confirmation times: asked again at the next hit
        src.name = s.get_string();
      } else if (const auto* so = s.if_object(); so != nullptr) {
        const auto* name = so->if_contains("name");
        if (name == nullptr || !name->is_string() || !get_int(*so, "confirmed", src.confirmed)) return std::nullopt;
        src.name = name->get_string();
      }
      if (src.name.empty()) return std::nullopt;
      e.sources.push_back(std::move(src));
    }
  }
  // Only a help for peers: a damaged list is dropped, the record kept.
  if (const auto* chunks = o.if_contains("chunks"); chunks != nullptr && chunks->is_string()) {
    const auto& hex = chunks->get_string();
    if (hex.size() % 32 == 0 && hex.find_first_not_of("0123456789abcdef") == boost::json::string::npos) {
      e.chunks = std::string(hex);
    }
  }
  file_identity id;
  if (get_int(o, "inode", id.inode) && get_int(o, "ctime_ns", id.ctime_ns)) {
    id.size = e.size;
    e.verified_as = id;
  }
  return e;
}

namespace {

// RocksDB's own messages go to Berth's log (errors only), never to a LOG
// file in the cache directory: on a full disk that file's failed writes made
// RocksDB abort when it was closed.
class rocks_logger final : public rocksdb::Logger {
 public:
  rocks_logger() : rocksdb::Logger(rocksdb::InfoLogLevel::ERROR_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::ERROR_LEVEL, format, ap); }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[1024];
    std::vsnprintf(line, sizeof line, format, ap);
    log::error("rocksdb", {{"db", "cache index"}, {"message", std::string_view(line)}});
  }
};

class rocks final : public index {
 public:
  explicit rocks(rocksdb::DB* db) : db_(db) {}
  // RocksDB (built with assertions in Debian) aborts when a handle whose write failed
  // (ENOSPC, EIO) is closed: such a handle is left to the kernel, as a crash would
  // leave it; the write-ahead log brings the index back on the next open.
  ~rocks() override {
    std::uint64_t background_errors = 0;
    db_->GetIntProperty("rocksdb.background-errors", &background_errors);
    if (write_failed_ || background_errors > 0) (void)db_.release();
  }
  rocks(const rocks&) = delete;
  rocks& operator=(const rocks&) = delete;

  std::optional<blob_entry> get(const std::string& digest, boost::system::error_code& ec) override {
    ec = {};
    std::string v;
    const auto status = db_->Get(rocksdb::ReadOptions(), digest, &v);
    if (status.IsNotFound()) return std::nullopt;
    if (!status.ok()) {
      log::error("cache_index_read_failed", {{"digest", digest}, {"error", status.ToString()}});
      ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
      return std::nullopt;
    }
    return decode_entry(v);
  }
  bool put(const std::string& digest, const blob_entry& e) override {
    return written(db_->Put(rocksdb::WriteOptions(), digest, encode_entry(e)));
  }
  void erase(const std::string& digest) override { written(db_->Delete(rocksdb::WriteOptions(), digest)); }
  bool for_each(const std::function<void(const std::string&, const blob_entry&)>& fn,
                std::vector<std::string>* stale) override {
    // A scan reads every block once: read ahead, and leave the block cache to the
    // lookups that follow.
    rocksdb::ReadOptions scan;
    scan.readahead_size = 1 << 20;
    scan.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(scan));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const auto v = it->value().ToStringView();
      auto e = decode_entry(v);
      if (stale != nullptr && (!e || legacy_entry(v))) stale->push_back(it->key().ToString());
      if (e) fn(it->key().ToString(), *e);
    }
    if (!it->status().ok()) {
      log::error("cache_index_read_failed", {{"scan", true}, {"error", it->status().ToString()}});
      return false;
    }
    return true;
  }
  repaired repair(const std::string& digest) override {
    // The record as it is now, not as a scan's snapshot saw it: it may have been
    // dropped or replaced since.
    std::string v;
    if (!db_->Get(rocksdb::ReadOptions(), digest, &v).ok()) return repaired::nothing;
    auto e = decode_entry(v);
    if (!e) {
      written(db_->Delete(rocksdb::WriteOptions(), digest));
      return repaired::dropped;
    }
    if (!legacy_entry(v)) return repaired::nothing;
    written(db_->Put(rocksdb::WriteOptions(), digest, encode_entry(*e)));
    return repaired::rewritten;
  }

 private:
  bool written(const rocksdb::Status& s) {
    if (!s.ok()) write_failed_ = true;
    return s.ok();
  }
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<bool> write_failed_{false};
};

}  // namespace

const source* blob_entry::find_source(const std::string& name) const {
  for (const auto& s : sources) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

std::unique_ptr<index> index::open(const std::string& path, bool read_only) {
  rocksdb::Options options;
  options.create_if_missing = !read_only;
  options.max_open_files = 64;
  options.keep_log_file_num = 2;
  options.IncreaseParallelism(2);
  // After a kill -9, RocksDB replays the write-ahead log into the memtable before it
  // opens: the memtable's size bounds that replay (64 MiB by default, seconds of
  // start-up; 4 MiB is about 16 000 records, tens of milliseconds).
  options.write_buffer_size = 4 << 20;
  // Closing writes nothing (the write-ahead log already holds every write): a full
  // disk cannot fail the close, and the exit is quick.
  options.avoid_flush_during_shutdown = true;
  options.info_log = std::make_shared<rocks_logger>();
  // Made first: RocksDB logs an error when it finds no directory to read (it would
  // create it), which on every new cache would look like a fault.
  std::error_code ignored;
  if (!read_only) std::filesystem::create_directories(path, ignored);
  rocksdb::DB* db = nullptr;
  const auto status =
      read_only ? rocksdb::DB::OpenForReadOnly(options, path, &db) : rocksdb::DB::Open(options, path, &db);
  if (!status.ok()) throw std::runtime_error("cache index " + path + ": " + status.ToString());
  return std::make_unique<rocks>(db);
}

}  // namespace berth::store
