#include "meta/local_db.hpp"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <rocksdb/write_batch.h>
#include <cstdarg>
#include <cstdio>

#include <atomic>
#include <filesystem>
#include <stdexcept>

#include "core/log.hpp"

namespace berth::meta {
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
    log::error("rocksdb", {{"db", "metadata store"}, {"message", std::string_view(line)}});
  }
};

class rocks final : public local_db {
 public:
  explicit rocks(rocksdb::DB* db) : db_(db) {}
  // RocksDB (built with assertions in Debian) aborts when a handle whose write failed
  // (ENOSPC, EIO) is closed: such a handle is left to the kernel, as a crash would
  // leave it; the write-ahead log brings the store back on the next open.
  ~rocks() override {
    std::uint64_t background_errors = 0;
    db_->GetIntProperty("rocksdb.background-errors", &background_errors);
    if (write_failed_ || background_errors > 0) (void)db_.release();
  }
  rocks(const rocks&) = delete;
  rocks& operator=(const rocks&) = delete;

  std::optional<std::string> get(const std::string& key) override {
    std::string v;
    if (!db_->Get(rocksdb::ReadOptions(), key, &v).ok()) return std::nullopt;
    return v;
  }
  bool put(const std::string& key, const std::string& value) override {
    return written(db_->Put(rocksdb::WriteOptions(), key, value));
  }
  void erase(const std::string& key) override { written(db_->Delete(rocksdb::WriteOptions(), key)); }
  void erase_prefix(const std::string& prefix) override {
    rocksdb::WriteBatch batch;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) batch.Delete(it->key());
    written(db_->Write(rocksdb::WriteOptions(), &batch));
  }
  void sweep(const std::string& prefix,
             const std::function<bool(const std::string&, const std::string&)>& keep) override {
    rocksdb::WriteBatch batch;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      if (!keep(it->key().ToString(), it->value().ToString())) batch.Delete(it->key());
    }
    written(db_->Write(rocksdb::WriteOptions(), &batch));
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

std::unique_ptr<local_db> local_db::open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = 32;
  options.keep_log_file_num = 2;
  // Closing writes nothing (the write-ahead log already holds every write): a full
  // disk cannot fail the close, and the exit is quick.
  options.avoid_flush_during_shutdown = true;
  options.info_log = std::make_shared<rocks_logger>();
  // Made first: RocksDB logs an error when it finds no directory to read (it would
  // create it), which on every new cache would look like a fault.
  std::error_code ignored;
  std::filesystem::create_directories(path, ignored);
  rocksdb::DB* db = nullptr;
  const auto status = rocksdb::DB::Open(options, path, &db);
  if (!status.ok()) throw std::runtime_error("metadata store " + path + ": " + status.ToString());
  return std::make_unique<rocks>(db);
}

}  // namespace berth::meta
