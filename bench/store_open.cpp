// Start-up cost of the blob cache: open() on a cache whose index holds N blobs.
// open() sums the index and clears tmp/; it never scans blobs/, so it should stay
// well under a second at 100 000 blobs.
//   build/bench/berth_store_open_bench --benchmark_min_time=1
#include <benchmark/benchmark.h>

#include <filesystem>

#include "core/log.hpp"
#include "metrics/metrics.hpp"
#include "store/blob_store.hpp"

namespace {

std::string make_cache(std::size_t blobs) {
  const auto dir = std::filesystem::temp_directory_path() / ("berth-open-bench-" + std::to_string(blobs));
  if (!std::filesystem::exists(dir / "index")) {
    std::filesystem::create_directories(dir);
    auto idx = berth::store::index::open((dir / "index").string());
    char hex[65];
    for (std::size_t i = 0; i < blobs; ++i) {
      std::snprintf(hex, sizeof hex, "%064zx", i);
      idx->put(std::string("sha256:") + hex,
               {1000 + i, "application/vnd.oci.image.layer.v1.tar+gzip", 1, 1, {}, std::nullopt});
    }
  }
  return dir.string();
}

void bm_open(benchmark::State& state) {
  const auto blobs = static_cast<std::size_t>(state.range(0));
  const auto dir = make_cache(blobs);
  for (auto _ : state) {
    berth::metrics::registry metrics;
    berth::store::blob_store store({dir, 0, 0.8, 0.85}, berth::store::posix_filesystem(), metrics);
    store.open();
    if (store.current_usage().blobs != blobs) state.SkipWithError("wrong blob count");
  }
  state.counters["blobs"] = static_cast<double>(blobs);
}

}  // namespace

BENCHMARK(bm_open)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  berth::log::set_level(berth::log::level::warn);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
