#pragma once
// The blob index: digest -> size, media type, created, last access, in RocksDB
// under <cache dir>/index. The only file that includes RocksDB. Thread-safe.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace berth::store {

struct blob_entry {
  std::uint64_t size = 0;
  std::string media_type;
  std::int64_t created = 0;      // unix seconds
  std::int64_t last_access = 0;  // unix seconds
  // "<registry>/<repository>" pairs whose upstream answered 200 for this blob with
  // Berth's identity: a hit is served only to those (others are asked first).
  std::vector<std::string> sources;
  bool has_source(const std::string& s) const;
};

class index {
 public:
  // Throws std::runtime_error (naming the path and RocksDB's reason) if it cannot open.
  static std::unique_ptr<index> open(const std::string& path, bool read_only = false);
  virtual ~index() = default;

  virtual std::optional<blob_entry> get(const std::string& digest) = 0;
  // False when RocksDB refused the write (logged by the caller).
  virtual bool put(const std::string& digest, const blob_entry& e) = 0;
  virtual void erase(const std::string& digest) = 0;
  virtual void for_each(const std::function<void(const std::string& digest, const blob_entry&)>& fn) = 0;
};

}  // namespace berth::store
