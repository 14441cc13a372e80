// The bin's radix sorts replayed from cached CUDA graphs (host time: one graph launch instead of the
// runtime calls of CUB's onesweep passes; the forward is host-bound at 1 camera, notes/rasterize.md).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace ffa {
namespace rasterize {

// launch_sort_pairs (rasterize.h) with temp storage of temp_bytes, on `stream` of `device` (current).
// A call whose (device, n, end_bit, temp_bytes, buffer addresses) equals one of the last few uncached
// calls' is captured once into a CUDA graph (on a side stream: nothing runs during capture) and
// replayed from then on; the caching allocator hands out the same blocks in a steady loop, so that is
// the common case (a forward sorts twice: the pairs by depth, then the intersections by tile). Same kernels, same arguments, same results as a direct call. A graph is cached per key (at
// most 8, least recently used evicted); any capture error falls back to direct launches for good.
// FFAVATAR_NO_BIN_GRAPH=1 (read once) always launches directly.
cudaError_t sort_pairs_cached(void* temp, size_t temp_bytes, uint32_t* keys, uint32_t* keys_alt, int32_t* values,
                              int32_t* values_alt, int64_t n, int end_bit, bool* result_in_alt, int device,
                              cudaStream_t stream);

}  // namespace rasterize
}  // namespace ffa
