#pragma once
// The blob index: digest -> size, media type, created, last access, in RocksDB
// under <cache dir>/index. The only file that includes RocksDB. Thread-safe.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/system/error_code.hpp>

#include "store/filesystem.hpp"

namespace berth::store {

// A repository the upstream served a blob to, with Berth's identity, and when it
// last said so.
struct source {
  std::string name;            // "<registry>/<repository>"
  std::int64_t confirmed = 0;  // unix milliseconds; 0: unknown (asked again at once)
  bool operator==(const source&) const = default;
};

struct blob_entry {
  std::uint64_t size = 0;
  std::string media_type;
  std::int64_t created = 0;      // unix seconds
  std::int64_t last_access = 0;  // unix seconds
  // A hit is served only to these repositories, and only while their confirmation
  // is younger than cache.authorization_ttl (others are asked first).
  std::vector<source> sources;
  // The file's identity when its bytes were last hashed (at publish, or a verified
  // serve). A hit whose file no longer has it is hashed again as it is served.
  std::optional<file_identity> verified_as;
  // The blob's chunk hashes (core/chunk_hash.hpp) as hex, one after another, kept
  // for peers that fetch it from this node; empty for a blob of one chunk or less,
  // and for blobs cached before Berth kept them.
  std::string chunks{};
  const source* find_source(const std::string& name) const;
};

// The index record: a version byte, then JSON. Version 1 (before the version byte)
// was space-separated text; it is read with its sources dropped (they were open to
// injection through the media type), so each repository is confirmed again.
std::string encode_entry(const blob_entry& e);
// nullopt for a record that is not a valid entry (damaged, or from the future).
std::optional<blob_entry> decode_entry(std::string_view record);
// True for a record written before the version byte.
bool legacy_entry(std::string_view record);

class index {
 public:
  // Throws std::runtime_error (naming the path and RocksDB's reason) if it cannot open.
  static std::unique_ptr<index> open(const std::string& path, bool read_only = false);
  virtual ~index() = default;

  // nullopt with `ec` clear: not indexed (or a record that does not decode). A read
  // error sets `ec` (io_error; RocksDB's reason is logged here): that is not a miss.
  virtual std::optional<blob_entry> get(const std::string& digest, boost::system::error_code& ec) = 0;
  // False when RocksDB refused the write (logged by the caller).
  virtual bool put(const std::string& digest, const blob_entry& e) = 0;
  virtual void erase(const std::string& digest) = 0;
  // False when a read error stopped the scan early (logged). Records that cannot be
  // decoded are skipped; `stale` (when given) gets their keys and those of legacy
  // (version 1) records, for repair(). The scan writes nothing.
  virtual bool for_each(const std::function<void(const std::string& digest, const blob_entry&)>& fn,
                        std::vector<std::string>* stale = nullptr) = 0;
  // Rewrites `digest`'s record in the current format if it is still a legacy one, or
  // drops it if it still cannot be decoded. The caller keeps other writers of that
  // record out meanwhile (blob_store: under its lock).
  enum class repaired { nothing, rewritten, dropped };
  virtual repaired repair(const std::string& digest) = 0;
};

}  // namespace berth::store
