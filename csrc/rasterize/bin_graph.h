// The bin's launches replayed from cached CUDA graphs (host time: one graph launch instead of the
// runtime calls of several kernels and CUB's onesweep passes; the host must stay ahead of the GPU,
// notes/rasterize.md).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include <functional>

namespace ffa {
namespace rasterize {

// What identifies one sequence of launches: every pointer and size its kernels take.
struct GraphKey {
  static constexpr int kWords = 32;
  int device = -1;
  int n = 0;
  uint64_t w[kWords] = {};
  GraphKey& add(uint64_t v) {
    if (n < kWords) w[n] = v;
    ++n;  // past kWords: never cached (launch_cached launches directly)
    return *this;
  }
  GraphKey& add(const void* p) { return add((uint64_t)(uintptr_t)p); }
  bool operator==(const GraphKey& o) const {
    if (device != o.device || n != o.n) return false;
    for (int i = 0; i < n && i < kWords; ++i)
      if (w[i] != o.w[i]) return false;
    return true;
  }
};

// Queues the launches on the given stream; may report one int (e.g. which CUB double buffer holds
// the result), the same on every call with the same key.
using Enqueue = std::function<cudaError_t(cudaStream_t stream, int* result)>;

// enqueue(stream, result), or the same launches as a CUDA graph. A key that equals one of the last
// few uncached calls' is captured once (on a side stream: nothing runs during capture) and replayed
// from then on, with the result reported at capture; the caching allocator hands out the same blocks
// in a steady loop, so that is the common case. Same kernels, same arguments, same results as a
// direct call. At most 8 graphs are cached (least recently used evicted); any capture error falls
// back to direct launches for good. FFAVATAR_NO_BIN_GRAPH=1 (read per call) launches directly.
cudaError_t launch_cached(const GraphKey& key, const Enqueue& enqueue, int* result, cudaStream_t stream);

}  // namespace rasterize
}  // namespace ffa
