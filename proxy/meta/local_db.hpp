#pragma once
// The node's persistent copy of manifest metadata, in RocksDB under
// <cache dir>/metadata: answers ("e:<group>#<field>" -> encoded entry) and manifest
// bytes by digest ("m:<digest>" -> media type, newline, bytes). It lets a restarted
// node, or one cut off from Dragonfly, answer without asking the upstream again.
// The only file of meta/ that includes RocksDB. Thread-safe.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace berth::meta {

class local_db {
 public:
  // Throws std::runtime_error naming the path and RocksDB's reason.
  static std::unique_ptr<local_db> open(const std::string& path);
  virtual ~local_db() = default;

  virtual std::optional<std::string> get(const std::string& key) = 0;
  virtual bool put(const std::string& key, const std::string& value) = 0;
  virtual void erase(const std::string& key) = 0;
  // Erases every key that starts with `prefix`.
  virtual void erase_prefix(const std::string& prefix) = 0;
  // Calls fn for every key starting with `prefix`; fn returns false to erase the key.
  virtual void sweep(const std::string& prefix,
                     const std::function<bool(const std::string& key, const std::string& value)>& keep) = 0;
};

}  // namespace berth::meta
