#include "meta/local_db.hpp"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <stdexcept>

namespace berth::meta {
namespace {

class rocks final : public local_db {
 public:
  explicit rocks(rocksdb::DB* db) : db_(db) {}

  std::optional<std::string> get(const std::string& key) override {
    std::string v;
    if (!db_->Get(rocksdb::ReadOptions(), key, &v).ok()) return std::nullopt;
    return v;
  }
  bool put(const std::string& key, const std::string& value) override {
    return db_->Put(rocksdb::WriteOptions(), key, value).ok();
  }
  void erase(const std::string& key) override { db_->Delete(rocksdb::WriteOptions(), key); }
  void erase_prefix(const std::string& prefix) override {
    rocksdb::WriteBatch batch;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) batch.Delete(it->key());
    db_->Write(rocksdb::WriteOptions(), &batch);
  }
  void sweep(const std::string& prefix,
             const std::function<bool(const std::string&, const std::string&)>& keep) override {
    rocksdb::WriteBatch batch;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      if (!keep(it->key().ToString(), it->value().ToString())) batch.Delete(it->key());
    }
    db_->Write(rocksdb::WriteOptions(), &batch);
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace

std::unique_ptr<local_db> local_db::open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = 32;
  options.keep_log_file_num = 2;
  rocksdb::DB* db = nullptr;
  const auto status = rocksdb::DB::Open(options, path, &db);
  if (!status.ok()) throw std::runtime_error("metadata store " + path + ": " + status.ToString());
  return std::make_unique<rocks>(db);
}

}  // namespace berth::meta
