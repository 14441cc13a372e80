// The split plan of a render call (rasterize_split.h): which tiles are cut into chunks, their slots
// and the list of work items (one block each). One block of 1024 threads per image, over its tiles,
// its share of the pool and its segment of the work list:
//   1. histogram of the extra chunks the tiles ask for, by count (bins of kBinWidth splats);
//   2. a suffix sum over the bins gives the lowest bin whose tiles, with every heavier one, fit the
//      pool: those tiles are split, the others not (ties within a bin go together, so the plan
//      depends on the counts only, not on the order of anything);
//   3. a scan over the tiles in order gives each split tile its first slot and its work items.
#include <cub/block/block_scan.cuh>

#include "rasterize/rasterize.h"
#include "rasterize/rasterize_split.h"

namespace ffa {
namespace rasterize {
namespace {

constexpr int kPlanThreads = 1024;
constexpr int kBins = kPlanThreads;  // one per thread in the suffix sum
constexpr int kBinWidth = 32;        // splats; counts past kBins * kBinWidth share the last bin

__device__ __forceinline__ int tile_count(const int32_t* offsets, int64_t gt, int64_t G, int32_t n_isects) {
  const int32_t end = gt + 1 < G ? offsets[gt + 1] : n_isects;
  return end - offsets[gt];
}

__device__ __forceinline__ int want_split(int cnt) {
  const int ns = (cnt + kSplitChunk - 1) / kSplitChunk;
  return ns < 1 ? 1 : ns > kMaxSplit ? kMaxSplit : ns;
}

__device__ __forceinline__ int count_bin(int cnt) { return min(cnt / kBinWidth, kBins - 1); }

// Block m: tiles [m T, (m + 1) T) of the G, slots [m P, (m + 1) P) of the pool, work items
// [m (T + P), (m + 1) (T + P)).
__global__ void __launch_bounds__(kPlanThreads) split_plan_kernel(const int32_t* __restrict__ offsets, int64_t G,
                                                                  int64_t T, int32_t n_isects, int pool, int P,
                                                                  int2* __restrict__ plan, int32_t* __restrict__ work,
                                                                  int32_t* __restrict__ counters) {
  using Scan = cub::BlockScan<int, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[kBins];
  __shared__ int s_threshold, s_carry;
  const int tid = threadIdx.x;
  const int64_t gt0 = blockIdx.x * T, w0 = blockIdx.x * (T + P);
  const int s0 = blockIdx.x * P;
  hist[tid] = 0;
  if (tid == 0) {
    s_threshold = kBins;  // no bin fits: nothing is split
    s_carry = 0;
  }
  __syncthreads();
  for (int64_t t = tid; t < T; t += kPlanThreads) {
    const int cnt = tile_count(offsets, gt0 + t, G, n_isects);
    const int ns = want_split(cnt);
    if (ns > 1) atomicAdd(&hist[count_bin(cnt)], ns - 1);
  }
  __syncthreads();
  // thread t holds bin kBins - 1 - t: its inclusive prefix is the suffix sum of bins >= that bin
  int suffix;
  Scan(scan_tmp).InclusiveSum(hist[kBins - 1 - tid], suffix);
  const int bin = kBins - 1 - tid;
  if (suffix <= P && hist[bin] > 0) atomicMin(&s_threshold, bin);
  __syncthreads();
  const int threshold = s_threshold;
  // tiles in order, one per thread per round; extra chunks of the split ones scanned into slots
  for (int64_t r0 = 0; r0 < T; r0 += kPlanThreads) {
    const int64_t t = r0 + tid, gt = gt0 + t;
    int ns = 1;
    if (t < T) {
      const int cnt = tile_count(offsets, gt, G, n_isects);
      const int want = want_split(cnt);
      if (want > 1 && count_bin(cnt) >= threshold) ns = want;
    }
    int base, total;
    __syncthreads();  // scan_tmp and s_carry of the previous round consumed
    Scan(scan_tmp).ExclusiveSum(ns - 1, base, total);
    base += s_carry;
    if (t < T) {
      plan[gt] = make_int2(ns, s0 + base);
      for (int k = 0; k < ns - 1; ++k) counters[s0 + base + k] = counters[pool + s0 + base + k] = 0;
      const int64_t item = w0 + t + base;  // tiles before this one and their extra chunks
      for (int k = 0; k < ns; ++k) work[item + k] = (int32_t)(gt * kMaxSplit + k);
    }
    __syncthreads();
    if (tid == 0) s_carry += total;
  }
  __syncthreads();
  for (int64_t i = T + s_carry + tid; i < T + P; i += kPlanThreads) work[w0 + i] = -1;
}

}  // namespace

cudaError_t launch_split_plan(const int32_t* tile_offsets, int64_t G, int64_t images, int64_t n_isects,
                              int64_t pool, int32_t* state, cudaStream_t stream) {
  if (G == 0 || images == 0) return cudaSuccess;
  if (G % images != 0 || pool % images != 0 || images > 0x7fffffff) return cudaErrorInvalidValue;
  int2* plan = reinterpret_cast<int2*>(state);
  int32_t* work = state + 2 * G;
  int32_t* counters = work + G + pool;
  split_plan_kernel<<<(unsigned)images, kPlanThreads, 0, stream>>>(tile_offsets, G, G / images, (int32_t)n_isects,
                                                                   (int)pool, (int)(pool / images), plan, work,
                                                                   counters);
  return cudaGetLastError();
}

Split split_view(int32_t* state, int64_t G, int64_t pool, int64_t D) {
  Split s;
  if (state == nullptr || pool == 0) return s;
  s.plan = state;
  s.work = state + 2 * G;
  s.counters = state + 3 * G + pool;
  s.slots = reinterpret_cast<float*>(s.counters + 2 * pool);
  s.stride = D + 2;
  s.pool = pool;
  return s;
}

}  // namespace rasterize
}  // namespace ffa
