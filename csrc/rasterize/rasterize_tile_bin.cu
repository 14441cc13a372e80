// CUDA kernels of the bin's main way (rasterize.h): intersections grouped by tile with a histogram,
// a scan and atomic slots, then each tile's list sorted by (depth, flatten id) in shared memory.
// Torch-free: raw pointers, sizes, a stream.
//
// Why: a global radix sort of the intersections on (image | tile | depth) keys costs 6 passes over
// 1.4M keys at 8 cameras (or, pairs by depth then intersections by tile, 4 + 2 passes), ~100 us of
// onesweep passes with a fixed cost each. Here the tile of an intersection is a histogram slot (the
// tile offsets are its exclusive scan), and the order inside a tile, on average ~170 splats, is a
// bitonic sort in shared memory. Tiles longer than kTileSortCap are left to the glue, which then
// bins the call with the depth sort of rasterize_bin.cu instead; the order is the same either way
// (by image, tile, depth bits, then flatten id).
#include <cub/device/device_scan.cuh>

#include "common/splat_math.h"
#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {
namespace {

using splat::Projected;

constexpr int kThreads = 256;
constexpr int kSortThreads = 256;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

// The projected splat of pair i as the tile enumeration reads it (for_each_tile: the same tight test
// as the count of the projection, bit for bit).
__device__ __forceinline__ Projected<float> pair_splat(const float* means2d, const int32_t* radii, const float* conics,
                                                       const float* opac2d, int64_t i) {
  Projected<float> p;
  p.valid = true;
  const int2 r = reinterpret_cast<const int2*>(radii)[i];
  const float2 mm = reinterpret_cast<const float2*>(means2d)[i];
  p.mean2d[0] = mm.x;
  p.mean2d[1] = mm.y;
  p.radius[0] = r.x;
  p.radius[1] = r.y;
  p.conic[0] = conics[3 * i];
  p.conic[1] = conics[3 * i + 1];
  p.conic[2] = conics[3 * i + 2];
  p.opacity = opac2d[i];
  return p;
}

// Thread per pair: hist[image * T + tile] += 1 for each of its tiles.
__global__ void tile_hist_kernel(const float* __restrict__ means2d, const int32_t* __restrict__ radii,
                                 const float* __restrict__ conics, const float* __restrict__ opac2d,
                                 const int32_t* __restrict__ counts, Dims d, int32_t* __restrict__ hist) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d.B * d.C * d.N || counts[i] == 0) return;
  const Projected<float> p = pair_splat(means2d, radii, conics, opac2d, i);
  int32_t* h = hist + (i / d.N) * d.tiles_x * d.tiles_y;
  splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H, [&](int t) { atomicAdd(h + t, 1); });
}

// One block: stats[0] = the count (offsets[G]), stats[1] = the longest tile list.
__global__ void __launch_bounds__(1024) tile_stats_kernel(const int32_t* __restrict__ hist,
                                                          const int32_t* __restrict__ offsets, int64_t G,
                                                          int32_t* __restrict__ stats) {
  int m = 0;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) m = max(m, hist[g]);
  m = __reduce_max_sync(0xffffffffu, m);
  __shared__ int s_max[32];
  if ((threadIdx.x & 31) == 0) s_max[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < (blockDim.x >> 5) ? s_max[threadIdx.x] : 0;
    m = __reduce_max_sync(0xffffffffu, m);
    if (threadIdx.x == 0) {
      stats[0] = offsets[G];
      stats[1] = m;
    }
  }
}

// Thread per pair: each of its tiles takes the next free slot of that tile's list (the order inside
// a list is set by the sort below). Slots [0, capacity) only (a speculative capacity may be short).
__global__ void tile_emit_kernel(const float* __restrict__ means2d, const int32_t* __restrict__ radii,
                                 const float* __restrict__ conics, const float* __restrict__ opac2d,
                                 const int32_t* __restrict__ counts, Dims d, const int32_t* __restrict__ offsets,
                                 int32_t* __restrict__ fill, int32_t* __restrict__ ids, int64_t capacity) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d.B * d.C * d.N || counts[i] == 0) return;
  const Projected<float> p = pair_splat(means2d, radii, conics, opac2d, i);
  const int64_t g0 = (i / d.N) * d.tiles_x * d.tiles_y;
  splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H, [&](int t) {
    const int64_t k = (int64_t)offsets[g0 + t] + atomicAdd(fill + g0 + t, 1);
    if (k >= 0 && k < capacity) ids[k] = (int32_t)i;  // (k < 0: an int32-overflowed scan, caught on the host)
  });
}

// Block per tile: its list (within [0, capacity)) sorted by (depth bits, flatten id) in shared
// memory, a bitonic network over the next power of two (padding sorts last). Lists longer than
// kTileSortCap are left as they are (the glue bins such calls another way).
__global__ void __launch_bounds__(kSortThreads) tile_sort_kernel(const int32_t* __restrict__ offsets,
                                                                 const float* __restrict__ depths,
                                                                 int32_t* __restrict__ ids, int64_t capacity) {
  __shared__ uint64_t s[kTileSortCap];
  const int64_t g = blockIdx.x;
  const int64_t start = offsets[g], end = min((int64_t)offsets[g + 1], capacity);
  if (start < 0) return;  // an int32-overflowed scan (caught on the host)
  const int64_t len = end - start;
  if (len <= 1 || len > kTileSortCap) return;
  const int n = (int)len;
  int P = 2;
  while (P < n) P <<= 1;
  const int tid = threadIdx.x;
  for (int k = tid; k < P; k += kSortThreads) {
    uint64_t key = ~0ull;
    if (k < n) {
      const uint32_t id = (uint32_t)ids[start + k];
      key = ((uint64_t)__float_as_uint(depths[id]) << 32) | id;
    }
    s[k] = key;
  }
  __syncthreads();
  for (int k = 2; k <= P; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int q = tid; q < (P >> 1); q += kSortThreads) {
        const int a = 2 * q - (q & (j - 1)), b = a + j;  // the pair (a, a + j), a with bit j clear
        const uint64_t x = s[a], y = s[b];
        const bool up = (a & k) == 0;
        if ((x > y) == up) {
          s[a] = y;
          s[b] = x;
        }
      }
      __syncthreads();
    }
  }
  for (int k = tid; k < n; k += kSortThreads) ids[start + k] = (int32_t)(uint32_t)s[k];
}

}  // namespace

cudaError_t launch_tile_hist(const float* means2d, const int32_t* radii, const float* conics, const float* opac2d,
                             const int32_t* counts, const Dims& d, int32_t* hist, cudaStream_t stream) {
  const int64_t n = d.B * d.C * d.N;
  if (n == 0) return cudaSuccess;
  tile_hist_kernel<<<blocks_for(n), kThreads, 0, stream>>>(means2d, radii, conics, opac2d, counts, d, hist);
  return cudaGetLastError();
}

cudaError_t launch_tile_scan(void* temp, size_t* temp_bytes, const int32_t* hist, int32_t* offsets, int64_t G,
                             cudaStream_t stream) {
  return cub::DeviceScan::ExclusiveSum(temp, *temp_bytes, hist, offsets, (int)(G + 1), stream);
}

cudaError_t launch_tile_stats(const int32_t* hist, const int32_t* offsets, int64_t G, int32_t* stats,
                              cudaStream_t stream) {
  tile_stats_kernel<<<1, 1024, 0, stream>>>(hist, offsets, G, stats);
  return cudaGetLastError();
}

cudaError_t launch_tile_emit(const float* means2d, const int32_t* radii, const float* conics, const float* opac2d,
                             const int32_t* counts, const Dims& d, const int32_t* offsets, int32_t* fill,
                             int32_t* ids, int64_t capacity, cudaStream_t stream) {
  const int64_t n = d.B * d.C * d.N;
  if (n == 0) return cudaSuccess;
  tile_emit_kernel<<<blocks_for(n), kThreads, 0, stream>>>(means2d, radii, conics, opac2d, counts, d, offsets, fill,
                                                            ids, capacity);
  return cudaGetLastError();
}

cudaError_t launch_tile_sort(const int32_t* offsets, int64_t G, const float* depths, int32_t* ids, int64_t capacity,
                             cudaStream_t stream) {
  if (G == 0) return cudaSuccess;
  if (G > 0x7fffffff) return cudaErrorInvalidConfiguration;
  tile_sort_kernel<<<(unsigned)G, kSortThreads, 0, stream>>>(offsets, depths, ids, capacity);
  return cudaGetLastError();
}

}  // namespace rasterize
}  // namespace ffa
