#include "store/index.hpp"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <charconv>
#include <stdexcept>
#include <string_view>

namespace berth::store {
namespace {

// "size created last_access media_type source...": small, readable with ldb. Media
// types and sources never contain spaces.
std::string encode(const blob_entry& e) {
  std::string out = std::to_string(e.size) + ' ' + std::to_string(e.created) + ' ' + std::to_string(e.last_access) +
                    ' ' + e.media_type;
  for (const auto& s : e.sources) out += ' ' + s;
  return out;
}

std::optional<blob_entry> decode(std::string_view v) {
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
  auto sp = v.find(' ');
  e.media_type = std::string(v.substr(0, sp));
  while (sp != std::string_view::npos) {
    v.remove_prefix(sp + 1);
    sp = v.find(' ');
    if (auto s = v.substr(0, sp); !s.empty()) e.sources.emplace_back(s);
  }
  return e;
}

class rocks final : public index {
 public:
  explicit rocks(rocksdb::DB* db) : db_(db) {}

  std::optional<blob_entry> get(const std::string& digest) override {
    std::string v;
    if (!db_->Get(rocksdb::ReadOptions(), digest, &v).ok()) return std::nullopt;
    return decode(v);
  }
  bool put(const std::string& digest, const blob_entry& e) override {
    return db_->Put(rocksdb::WriteOptions(), digest, encode(e)).ok();
  }
  void erase(const std::string& digest) override { db_->Delete(rocksdb::WriteOptions(), digest); }
  void for_each(const std::function<void(const std::string&, const blob_entry&)>& fn) override {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (auto e = decode(it->value().ToStringView())) fn(it->key().ToString(), *e);
    }
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace

bool blob_entry::has_source(const std::string& s) const {
  for (const auto& x : sources) {
    if (x == s) return true;
  }
  return false;
}

std::unique_ptr<index> index::open(const std::string& path, bool read_only) {
  rocksdb::Options options;
  options.create_if_missing = !read_only;
  options.max_open_files = 64;
  options.keep_log_file_num = 2;
  options.IncreaseParallelism(2);
  rocksdb::DB* db = nullptr;
  const auto status =
      read_only ? rocksdb::DB::OpenForReadOnly(options, path, &db) : rocksdb::DB::Open(options, path, &db);
  if (!status.ok()) throw std::runtime_error("cache index " + path + ": " + status.ToString());
  return std::make_unique<rocks>(db);
}

}  // namespace berth::store
