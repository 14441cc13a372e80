// CUDA kernels of the bin (rasterize.h, steps 1-5): the (image, Gaussian) pairs sorted by depth, the
// tile counts scanned in that order, one 32-bit (image | tile) key per intersection emitted in depth
// order, a stable radix sort of those keys, tile offsets. Torch-free: raw pointers, sizes, a stream.
//
// Why two sorts: sorting 64-bit (image | tile | depth) keys costs 6 radix passes over every
// intersection (~2.4 per pair). Sorting the pairs by their 32 depth bits is 4 passes over the pairs,
// and the stable sort of the intersections on the image and tile bits (<= 16 bits here) 2 passes over
// 32-bit keys. The order is the same: by image, tile, depth, and on equal depth bits by flatten id
// (the depth sort is stable over the pairs in id order, and the tile sort keeps that order).
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <thrust/iterator/permutation_iterator.h>

#include "common/splat_math.h"
#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {
namespace {

using splat::Projected;

constexpr int kMaxPasses = 32 / kSortRadixBits;

// Last block of a counting kernel (after every block has added its digit counts to st.bins and
// taken a ticket): each pass's exclusive sums, in place. Every pass counts the same n keys, so pass
// p's sums are the running sums over all passes minus p n. The counts must total n in every pass
// (one count per key of [0, n)); when they do not (a corrupt scan), all offsets are set to 0
// instead: the sort's writes stay within [0, n) (the result is garbage; the host reports the error).
template <int Threads, int Passes>
__device__ __forceinline__ void finish_digit_offsets(const SortState& st, int64_t n) {
  using Scan = cub::BlockScan<uint32_t, Threads>;
  constexpr int kBins = Passes * kSortDigits, kPer = kBins / Threads;
  static_assert(kBins % Threads == 0, "bins per thread");
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ uint32_t s_total;
  __threadfence();
  uint32_t v[kPer];
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int b = threadIdx.x * kPer + u;
    v[u] = b < st.passes * kSortDigits ? __ldcg(st.bins + b) : 0u;
  }
  uint32_t total;
  Scan(scan_tmp).ExclusiveSum(v, v, total);
  if (threadIdx.x == 0) s_total = total;
  __syncthreads();
  const bool ok = s_total == (uint32_t)n * (uint32_t)st.passes;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int b = threadIdx.x * kPer + u;
    if (b < st.passes * kSortDigits) st.bins[b] = ok ? v[u] - (uint32_t)(b / kSortDigits) * (uint32_t)n : 0u;
  }
}

// The block's digit counts (shared hist, passes x kSortDigits) added to st.bins; true in the block
// that finished last.
__device__ __forceinline__ bool flush_digit_counts(const uint32_t* hist, const SortState& st) {
  __shared__ bool s_last;
  __syncthreads();
  for (int b = threadIdx.x; b < st.passes * kSortDigits; b += blockDim.x)
    if (hist[b] != 0u) atomicAdd(st.bins + b, hist[b]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(st.done, 1) == (int)gridDim.x - 1;
  __syncthreads();
  return s_last;
}

// times x the digits of key, one per pass, into the block's counts.
__device__ __forceinline__ void count_digits(uint32_t* hist, uint32_t key, const SortState& st, uint32_t times = 1) {
  for (int p = 0; p < st.passes; ++p) {
    const int bit = p * kSortRadixBits, bits = min(kSortRadixBits, st.end_bit - bit);
    atomicAdd(&hist[p * kSortDigits + ((key >> bit) & ((1u << bits) - 1u))], times);
  }
}

// keys[i] = the bits of depths[i] (positive floats order as their bits; a culled pair's key is
// whatever its depth holds: it has no tiles, so where it lands does not matter), ids[i] = i. Grid-
// stride. count: the digit counts of the keys for the depth sort (per block in shared memory, then
// added to st.bins; the last block to finish turns them into each pass's exclusive sums). Also
// zeroes zero[0, zero_words).
constexpr int kKeyThreads = 512;
constexpr int kKeyBlocks = 256;  // at most; enough to stream the keys, few global adds per bin

__global__ void __launch_bounds__(kKeyThreads) depth_keys_kernel(const float* __restrict__ depths, int64_t n,
                                                                 uint32_t* __restrict__ keys,
                                                                 int32_t* __restrict__ ids, SortState st, bool count,
                                                                 int32_t* __restrict__ zero, int64_t zero_words) {
  constexpr int kBins = kMaxPasses * kSortDigits;
  __shared__ uint32_t hist[kBins];
  const int tid = threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * kKeyThreads, i0 = (int64_t)blockIdx.x * kKeyThreads + tid;
  for (int64_t z = i0; z < zero_words; z += stride) zero[z] = 0;
  for (int b = tid; b < kBins; b += kKeyThreads) hist[b] = 0;
  __syncthreads();
  for (int64_t i = i0; i < n; i += stride) {
    const uint32_t k = __float_as_uint(depths[i]);
    keys[i] = k;
    ids[i] = (int32_t)i;
    if (count) count_digits(hist, k, st);
  }
  if (count && flush_digit_counts(hist, st)) finish_digit_offsets<kKeyThreads, kMaxPasses>(st, n);
}

// Pairs in depth order (grid-stride): the pair's tiles (the same tight test as the count, bit for
// bit: no FMA contraction) as keys (image << tile_bits | tile) at its slots of the scan. sentinels:
// the key slots [count, capacity) are set to all ones (their values to -1) as well. count: the digit
// counts of the keys written (every slot of [0, capacity) once when the scan is sound) for the tile
// sort, as depth_keys_kernel does.
constexpr int kEmitThreads = 256;
constexpr int kEmitBlocks = 528;  // at most: ~4 per SM of an H200; few global adds per digit

__global__ void __launch_bounds__(kEmitThreads) emit_keys_kernel(
    const float* __restrict__ means2d, const int32_t* __restrict__ radii, const float* __restrict__ conics,
    const float* __restrict__ opac2d, const int32_t* __restrict__ order, const int32_t* __restrict__ offsets, Dims d,
    int tile_bits, uint32_t* __restrict__ keys, int32_t* __restrict__ values, int64_t capacity, bool sentinels,
    SortState st, bool count) {
  __shared__ uint32_t hist[kMaxPasses * kSortDigits];
  const int tid = threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * kEmitThreads, i0 = (int64_t)blockIdx.x * kEmitThreads + tid;
  const int64_t MN = d.B * d.C * d.N;
  const int64_t c = offsets[MN - 1];
  if (count) {
    for (int b = tid; b < kMaxPasses * kSortDigits; b += kEmitThreads) hist[b] = 0u;
    __syncthreads();
    if (sentinels && blockIdx.x == 0 && tid == 0 && c < capacity)
      count_digits(hist, ~0u, st, (uint32_t)(capacity - (c < 0 ? 0 : c)));
  }
  if (sentinels)  // values too: the sort moves them (compute-sanitizer initcheck flagged the reads)
    for (int64_t k = (c < 0 ? 0 : c) + i0; k < capacity; k += stride) {
      keys[k] = ~0u;
      values[k] = -1;
    }
  for (int64_t s = i0; s < MN; s += stride) {
    const int64_t k_end = offsets[s];  // inclusive scan in depth order
    int64_t k = s > 0 ? (int64_t)offsets[s - 1] : 0;
    if (k == k_end) continue;  // no tiles (culled pairs among them)
    const int32_t i = order[s];
    const int2 r = reinterpret_cast<const int2*>(radii)[i];
    Projected<float> p;
    p.valid = true;
    const float2 mm = reinterpret_cast<const float2*>(means2d)[i];
    p.mean2d[0] = mm.x;
    p.mean2d[1] = mm.y;
    p.radius[0] = r.x;
    p.radius[1] = r.y;
    const float* cn = conics + 3 * (int64_t)i;
    p.conic[0] = cn[0];
    p.conic[1] = cn[1];
    p.conic[2] = cn[2];
    p.opacity = opac2d[i];
    const uint32_t hi = (uint32_t)(i / d.N) << tile_bits;
    // Slots [0, capacity) only: a speculative capacity may be below the count, and an int32 overflow
    // of the scan (caught on the host after this kernel is queued) may make k negative.
    const int64_t k_lim = k_end < capacity ? k_end : capacity;
    splat::for_each_tile(p, d.tile_size, d.tiles_x, d.tiles_y, d.W, d.H, [&](int t) {
      if (k >= 0 && k < k_lim) {
        const uint32_t key = hi | (uint32_t)t;
        keys[k] = key;
        values[k] = i;
        if (count) count_digits(hist, key, st);
      }
      ++k;
    });
  }
  if (count && flush_digit_counts(hist, st)) finish_digit_offsets<kEmitThreads, kMaxPasses>(st, capacity);
}

// n = n_max, or (n_dev != nullptr) the count read on the device, clamped to [0, n_max]: then the grid
// covers n_max threads and n == 0 zero-fills every offset.
__global__ void tile_offsets_kernel(const uint32_t* __restrict__ keys, int64_t n_max,
                                    const int32_t* __restrict__ n_dev, int tile_bits, int64_t tiles_per_image,
                                    int64_t total_tiles, int32_t* __restrict__ offsets) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t n = n_max;
  if (n_dev != nullptr) {
    const int64_t c = *n_dev;
    n = c < 0 ? 0 : c < n_max ? c : n_max;
  }
  if (n == 0) {
    for (int64_t t = idx; t < total_tiles; t += (int64_t)gridDim.x * blockDim.x) offsets[t] = 0;
    return;
  }
  if (idx >= n) return;
  // (clamped to the last tile: an emitted key never needs it, but a slot the emit did not write, e.g.
  // a sentinel, keeps every write in bounds)
  auto global_tile = [&](uint32_t key) {
    const int64_t t = (int64_t)(key >> tile_bits) * tiles_per_image + (key & ((1u << tile_bits) - 1u));
    return t < total_tiles ? t : total_tiles - 1;
  };
  const int64_t cur = global_tile(keys[idx]);
  if (idx == 0)
    for (int64_t t = 0; t <= cur; ++t) offsets[t] = 0;
  else {
    const int64_t prev = global_tile(keys[idx - 1]);
    for (int64_t t = prev + 1; t <= cur; ++t) offsets[t] = (int32_t)idx;
  }
  if (idx == n - 1)
    for (int64_t t = cur + 1; t < total_tiles; ++t) offsets[t] = (int32_t)n;
}

}  // namespace

cudaError_t launch_depth_keys(const float* depths, int64_t n, uint32_t* keys, int32_t* ids, const SortState* sort,
                              int32_t* zero, int64_t zero_words, cudaStream_t stream) {
  if (n == 0 && zero_words == 0) return cudaSuccess;
  if (sort != nullptr && (sort->passes != kMaxPasses || sort->n != n || n >= (int64_t(1) << 30)))
    return cudaErrorInvalidValue;
  const int64_t work = n > zero_words ? n : zero_words, need = (work + kKeyThreads - 1) / kKeyThreads;
  const int blocks = (int)(need < kKeyBlocks ? need : kKeyBlocks);
  depth_keys_kernel<<<blocks, kKeyThreads, 0, stream>>>(depths, n, keys, ids, sort ? *sort : SortState(),
                                                         sort != nullptr, zero, zero_words);
  return cudaGetLastError();
}

cudaError_t launch_sort_pairs(void* temp, size_t* temp_bytes, uint32_t* keys, uint32_t* keys_alt, int32_t* values,
                              int32_t* values_alt, int64_t n, int end_bit, bool* result_in_alt,
                              cudaStream_t stream) {
  cub::DoubleBuffer<uint32_t> k(keys, keys_alt);
  cub::DoubleBuffer<int32_t> v(values, values_alt);
  cudaError_t err = cub::DeviceRadixSort::SortPairs(temp, *temp_bytes, k, v, (int)n, 0, end_bit, stream);
  if (result_in_alt) *result_in_alt = k.selector == 1;
  return err;
}

cudaError_t launch_scan_counts(void* temp, size_t* temp_bytes, const int32_t* counts, const int32_t* order,
                               int32_t* offsets, int64_t n, cudaStream_t stream) {
  // counts[order[s]] for s = 0, 1, ...: the gather is read by the scan itself
  auto in = thrust::make_permutation_iterator(counts, order);
  return cub::DeviceScan::InclusiveSum(temp, *temp_bytes, in, offsets, (int)n, stream);
}

cudaError_t launch_emit_keys(const float* means2d, const int32_t* radii, const float* conics, const float* opac2d,
                             const int32_t* order, const int32_t* offsets, const Dims& d, uint32_t* keys,
                             int32_t* values, int64_t capacity, bool sentinels, const SortState* sort,
                             cudaStream_t stream) {
  const int64_t n = d.B * d.C * d.N;
  if (n == 0) return cudaSuccess;
  if (sort != nullptr && (sort->n != capacity || sort->passes > kMaxPasses)) return cudaErrorInvalidValue;
  const int tile_bits = bit_width((int64_t)d.tiles_x * d.tiles_y);
  const int64_t work = n > capacity ? n : capacity, need = (work + kEmitThreads - 1) / kEmitThreads;
  const int blocks = (int)(need < kEmitBlocks ? need : kEmitBlocks);
  emit_keys_kernel<<<blocks, kEmitThreads, 0, stream>>>(means2d, radii, conics, opac2d, order, offsets, d, tile_bits,
                                                         keys, values, capacity, sentinels,
                                                         sort ? *sort : SortState(), sort != nullptr);
  return cudaGetLastError();
}

cudaError_t launch_tile_offsets(const uint32_t* sorted_keys, int64_t n_isects, const int32_t* n_isects_dev,
                                const Dims& d, int32_t* tile_offsets, cudaStream_t stream) {
  if (n_isects == 0) return cudaSuccess;  // the glue zero-fills
  const int64_t tp = (int64_t)d.tiles_x * d.tiles_y;
  tile_offsets_kernel<<<blocks_for(n_isects), kThreads, 0, stream>>>(sorted_keys, n_isects, n_isects_dev,
                                                                      bit_width(tp), tp, d.B * d.C * tp, tile_offsets);
  return cudaGetLastError();
}

}  // namespace rasterize
}  // namespace ffa
