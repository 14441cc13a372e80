// launch_cached (bin_graph.h): the bin's launches as cached CUDA graphs.
#include "rasterize/bin_graph.h"

#include <c10/cuda/CUDAMacros.h>
#include <c10/util/Exception.h>

#include <mutex>
#include <vector>

#include "common/env.h"
#include "common/macros.h"

namespace ffa {
namespace rasterize {
namespace {

struct CachedGraph {
  GraphKey key;
  cudaGraphExec_t exec = nullptr;
  int result = 0;
  uint64_t used = 0;
};

constexpr size_t kMaxGraphs = 8;

constexpr int kMaxDevices = C10_COMPILE_TIME_MAX_GPUS;  // as the bin's per-device guess

// Never destroyed (no CUDA calls during process teardown); guarded by mu.
struct GraphCache {
  std::mutex mu;
  std::vector<CachedGraph> graphs;
  GraphKey misses[kMaxGraphs];  // the last uncached calls (a ring)
  size_t next_miss = 0;
  uint64_t clock = 0;
  bool broken = false;                            // a capture failed: direct launches from now on
  cudaStream_t capture_stream[kMaxDevices] = {};  // per device, created on first capture
};

GraphCache& cache() {
  static GraphCache* c = new GraphCache();
  return *c;
}

// Capture the launches on the device's side stream; nullptr when anything fails (errors cleared).
cudaGraphExec_t capture(GraphCache& c, const Enqueue& enqueue, int* result, int device) {
  cudaStream_t& side = c.capture_stream[device];
  if (side == nullptr && cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) != cudaSuccess) {
    side = nullptr;
    return nullptr;
  }
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaStreamBeginCapture(side, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    const cudaError_t launched = enqueue(side, result);
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

cudaError_t launch_cached(const GraphKey& key, const Enqueue& enqueue, int* result, cudaStream_t stream) {
  const int device = key.device;
  if (env::no_bin_graph() || device < 0 || device >= kMaxDevices || key.n > GraphKey::kWords) return enqueue(stream, result);
  GraphCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  if (c.broken) return enqueue(stream, result);
  for (CachedGraph& g : c.graphs) {
    if (g.key == key) {
      g.used = ++c.clock;
      *result = g.result;
      return cudaGraphLaunch(g.exec, stream);
    }
  }
  GraphKey* seen = nullptr;
  for (GraphKey& k : c.misses)
    if (k == key) seen = &k;
  if (seen == nullptr) {  // first sight of these launches: direct, remembered
    c.misses[c.next_miss] = key;
    c.next_miss = (c.next_miss + 1) % kMaxGraphs;
    return enqueue(stream, result);
  }
  CachedGraph g;
  g.key = key;
  g.exec = capture(c, enqueue, &g.result, device);
  if (g.exec == nullptr) {
    c.broken = true;
    TORCH_WARN_ONCE("rasterize: capturing the bin into a CUDA graph failed; its kernels are launched directly "
                    "from now on (same results)");
    return enqueue(stream, result);
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
  *seen = GraphKey();
  *result = g.result;
  return cudaGraphLaunch(g.exec, stream);
}

}  // namespace rasterize
}  // namespace ffa
