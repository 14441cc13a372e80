// sort_pairs_cached (sort_graph.h): CUB's radix sorts of the bin as cached CUDA graphs.
#include "rasterize/sort_graph.h"

#include <c10/cuda/CUDAMacros.h>
#include <c10/util/Exception.h>

#include <mutex>
#include <vector>

#include "common/macros.h"
#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {
namespace {

struct SortKey {
  int device = -1, end_bit = 0;
  int64_t n = 0;
  size_t temp_bytes = 0;
  const void* ptr[5] = {};
  bool operator==(const SortKey& o) const {
    for (int i = 0; i < 5; ++i)
      if (ptr[i] != o.ptr[i]) return false;
    return device == o.device && end_bit == o.end_bit && n == o.n && temp_bytes == o.temp_bytes;
  }
};

struct SortGraph {
  SortKey key;
  cudaGraphExec_t exec = nullptr;
  bool in_alt = false;
  uint64_t used = 0;
};

constexpr size_t kMaxGraphs = 8;

constexpr int kMaxDevices = C10_COMPILE_TIME_MAX_GPUS;  // as the bin's per-device guess

// Never destroyed (no CUDA calls during process teardown); guarded by mu.
struct SortGraphCache {
  std::mutex mu;
  std::vector<SortGraph> graphs;
  SortKey misses[kMaxGraphs];               // the last uncached calls (a ring)
  size_t next_miss = 0;
  uint64_t clock = 0;
  bool broken = false;                      // a capture failed: direct launches from now on
  cudaStream_t capture_stream[kMaxDevices] = {};  // per device, created on first capture
};

SortGraphCache& cache() {
  static SortGraphCache* c = new SortGraphCache();
  return *c;
}

bool graphs_off() {
  static const bool off = ffa_env_flag("FFAVATAR_NO_BIN_GRAPH");
  return off;
}

// Capture the sort on the device's side stream; nullptr when anything fails (errors cleared).
cudaGraphExec_t capture(SortGraphCache& c, void* temp, size_t temp_bytes, uint32_t* keys, uint32_t* keys_alt,
                        int32_t* values, int32_t* values_alt, int64_t n, int end_bit, bool* in_alt, int device) {
  if (device < 0 || device >= kMaxDevices) return nullptr;
  cudaStream_t& side = c.capture_stream[device];
  if (side == nullptr && cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess) {
    side = nullptr;
    return nullptr;
  }
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaStreamBeginCapture(side, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    const cudaError_t launched =
        launch_sort_pairs(temp, &temp_bytes, keys, keys_alt, values, values_alt, n, end_bit, in_alt, side);
    err = cudaStreamEndCapture(side, &graph);  // always ends the capture
    if (launched != cudaSuccess) err = launched;
    if (err == cudaSuccess) err = cudaGraphInstantiateWithFlags(&exec, graph, 0);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
    return nullptr;
  }
  return exec;
}

}  // namespace

cudaError_t sort_pairs_cached(void* temp, size_t temp_bytes, uint32_t* keys, uint32_t* keys_alt, int32_t* values,
                              int32_t* values_alt, int64_t n, int end_bit, bool* result_in_alt, int device,
                              cudaStream_t stream) {
  auto direct = [&]() {
    return launch_sort_pairs(temp, &temp_bytes, keys, keys_alt, values, values_alt, n, end_bit, result_in_alt,
                             stream);
  };
  if (graphs_off()) return direct();
  SortGraphCache& c = cache();
  SortKey key;
  key.device = device;
  key.end_bit = end_bit;
  key.n = n;
  key.temp_bytes = temp_bytes;
  const void* ptrs[5] = {temp, keys, keys_alt, values, values_alt};
  for (int i = 0; i < 5; ++i) key.ptr[i] = ptrs[i];

  std::lock_guard<std::mutex> lock(c.mu);
  if (c.broken || device < 0 || device >= kMaxDevices) return direct();
  for (SortGraph& g : c.graphs) {
    if (g.key == key) {
      g.used = ++c.clock;
      if (result_in_alt) *result_in_alt = g.in_alt;
      return cudaGraphLaunch(g.exec, stream);
    }
  }
  SortKey* seen = nullptr;
  for (SortKey& k : c.misses)
    if (k == key) seen = &k;
  if (seen == nullptr) {  // first sight of this call: launch directly, remember it
    c.misses[c.next_miss] = key;
    c.next_miss = (c.next_miss + 1) % kMaxGraphs;
    return direct();
  }
  SortGraph g;
  g.key = key;
  g.exec = capture(c, temp, temp_bytes, keys, keys_alt, values, values_alt, n, end_bit, &g.in_alt, device);
  if (g.exec == nullptr) {
    c.broken = true;
    TORCH_WARN_ONCE("rasterize: capturing the bin's sort into a CUDA graph failed; the sort is launched "
                    "directly from now on (same results)");
    return direct();
  }
  if (c.graphs.size() >= kMaxGraphs) {  // evict the least recently used (freed once its launches finish)
    size_t lru = 0;
    for (size_t i = 1; i < c.graphs.size(); ++i)
      if (c.graphs[i].used < c.graphs[lru].used) lru = i;
    (void)cudaGraphExecDestroy(c.graphs[lru].exec);
    c.graphs.erase(c.graphs.begin() + (std::ptrdiff_t)lru);
  }
  g.used = ++c.clock;
  c.graphs.push_back(g);
  *seen = SortKey();
  if (result_in_alt) *result_in_alt = g.in_alt;
  return cudaGraphLaunch(g.exec, stream);
}

}  // namespace rasterize
}  // namespace ffa
