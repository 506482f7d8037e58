#pragma once
// The real blob index, with read errors on demand (a RocksDB that cannot read a
// block: EIO under it, a damaged SST file).
#include <atomic>
#include <boost/system/errc.hpp>
#include <memory>

#include "store/blob_store.hpp"
#include "store/index.hpp"

namespace berth::testing {

class faulting_index final : public store::index {
 public:
  explicit faulting_index(std::unique_ptr<store::index> real) : real_(std::move(real)) {}
  // Shared with the test that set it up (the store owns the index).
  std::shared_ptr<std::atomic<bool>> fail_reads = std::make_shared<std::atomic<bool>>(false);

  std::optional<store::blob_entry> get(const std::string& digest, boost::system::error_code& ec) override {
    if (*fail_reads) {
      ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
      return std::nullopt;
    }
    return real_->get(digest, ec);
  }
  bool put(const std::string& digest, const store::blob_entry& e) override { return real_->put(digest, e); }
  void erase(const std::string& digest) override { real_->erase(digest); }
  bool for_each(const std::function<void(const std::string&, const store::blob_entry&)>& fn,
                std::vector<std::string>* stale) override {
    if (*fail_reads) return false;
    return real_->for_each(fn, stale);
  }
  repaired repair(const std::string& digest) override { return real_->repair(digest); }

 private:
  std::unique_ptr<store::index> real_;
};

// An index opener for blob_store that wraps the real index; `fail_reads` switches
// its read errors on and off.
inline store::blob_store::index_opener faulting_index_opener(std::shared_ptr<std::atomic<bool>> fail_reads) {
  return [fail_reads](const std::string& path) {
    auto idx = std::make_unique<faulting_index>(store::index::open(path));
    idx->fail_reads = fail_reads;
    return std::unique_ptr<store::index>(std::move(idx));
  };
}

}  // namespace berth::testing
