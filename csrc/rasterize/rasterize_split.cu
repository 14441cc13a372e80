// The split plan of a render call (rasterize_split.h): which tiles are cut into chunks, their slots
// and the list of work items (one block each), heaviest first. Two kernels of one block of 1024
// threads per image.
// split_plan_kernel, over the image's tiles and its share of the pool:
//   1. histogram of the extra chunks the tiles ask for, by count (bins of kBinWidth splats);
//   2. a suffix sum over the bins gives the lowest bin whose tiles, with every heavier one, fit the
//      pool: those tiles are split, the others not (ties within a bin go together, so the plan
//      depends on the counts only, not on the order of anything);
//   3. a scan over the tiles in order gives each split tile its first slot; the work items are
//      counted by cost class (kOrderClasses classes of the chunk length, kOrderWidth splats wide).
// split_order_kernel: the work list, every image's items by class, heaviest class first, and within
// a class by image, tile and chunk. Why: blocks start in index order, so a heavy tile late in the
// list (in tile order: the middle of the last image) runs alone at the end while the other SMs are
// idle (ncu at 8 cameras: SMs active 82% of the render's cycles). Heaviest first is the classic
// longest-processing-time order. The chunks of a tile stay consecutive and in order (chunk k waits
// for chunk k - 1, which must start first).
#include <cub/block/block_scan.cuh>

#include "rasterize/rasterize.h"
#include "rasterize/rasterize_split.h"

namespace ffa {
namespace rasterize {
namespace {

constexpr int kPlanThreads = 1024;
constexpr int kBins = kPlanThreads;  // one per thread in the suffix sum
constexpr int kBinWidth = 32;        // splats; counts past kBins * kBinWidth share the last bin
constexpr int kOrderClasses = 64;    // cost classes of the work order
constexpr int kOrderWidth = 32;      // splats per class; chunks past the last class share it
constexpr int kPlanWarps = kPlanThreads / 32;

__device__ __forceinline__ int tile_count(const int32_t* offsets, int64_t gt, int64_t G, int32_t n_isects) {
  const int32_t end = gt + 1 < G ? offsets[gt + 1] : n_isects;
  return end - offsets[gt];
}

__device__ __forceinline__ int want_split(int cnt) {
  const int ns = (cnt + kSplitChunk - 1) / kSplitChunk;
  return ns < 1 ? 1 : ns > kMaxSplit ? kMaxSplit : ns;
}

__device__ __forceinline__ int count_bin(int cnt) { return min(cnt / kBinWidth, kBins - 1); }

// Cost class of the chunks of a tile of cnt splats cut into ns (their length, as chunk_range cuts).
__device__ __forceinline__ int order_class(int cnt, int ns) {
  return min((cnt + ns - 1) / ns / kOrderWidth, kOrderClasses - 1);
}

// Block m: tiles [m T, (m + 1) T) of the G, slots [m P, (m + 1) P) of the pool. classes: [images,
// kOrderClasses] work items per class of each image (for split_order_kernel).
__global__ void __launch_bounds__(kPlanThreads) split_plan_kernel(const int32_t* __restrict__ offsets, int64_t G,
                                                                  int64_t T, int32_t n_isects,
                                                                  const int32_t* __restrict__ n_isects_dev, int pool,
                                                                  int P, int2* __restrict__ plan,
                                                                  int32_t* __restrict__ counters,
                                                                  int32_t* __restrict__ classes) {
  n_isects = isect_end(n_isects, n_isects_dev);
  using Scan = cub::BlockScan<int, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[kBins];
  __shared__ int items[kOrderClasses];
  __shared__ int s_threshold, s_carry;
  const int tid = threadIdx.x;
  const int64_t gt0 = blockIdx.x * T;
  const int s0 = blockIdx.x * P;
  hist[tid] = 0;
  if (tid < kOrderClasses) items[tid] = 0;
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
    int ns = 1, cnt = 0;
    if (t < T) {
      cnt = tile_count(offsets, gt, G, n_isects);
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
      atomicAdd(&items[order_class(cnt, ns)], ns);
    }
    __syncthreads();
    if (tid == 0) s_carry += total;
  }
  __syncthreads();
  if (tid < kOrderClasses) classes[blockIdx.x * kOrderClasses + tid] = items[tid];
}

// Block m writes image m's work items (gt * kMaxSplit + chunk) at their places in the list: classes
// heaviest first; within a class, images in order; within an image, tiles in order (a stable
// counting sort: ranks from a warp-level match on the class and a per-class scan over the warps).
// Entries past the last item are -1.
__global__ void __launch_bounds__(kPlanThreads) split_order_kernel(const int32_t* __restrict__ offsets, int64_t G,
                                                                   int64_t T, int32_t n_isects,
                                                                   const int32_t* __restrict__ n_isects_dev, int images,
                                                                   int64_t items_max, const int2* __restrict__ plan,
                                                                   const int32_t* __restrict__ classes,
                                                                   int32_t* __restrict__ work) {
  n_isects = isect_end(n_isects, n_isects_dev);
  constexpr int kGroups = kPlanThreads / kOrderClasses;
  __shared__ int base[kOrderClasses];
  __shared__ int part[2][kGroups][kOrderClasses];  // per group of images: items per class, all / before m
  __shared__ int wsum[kPlanWarps][kOrderClasses];  // per round: a warp's items per class, then its offset
  __shared__ int s_used;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, m = blockIdx.x;
  const int64_t gt0 = (int64_t)m * T;
  {  // items per class over all images, and over the images before m (thread: class c, images g + k kGroups)
    const int c = tid % kOrderClasses, g = tid / kOrderClasses;
    int tot = 0, bef = 0;
    for (int mm = g; mm < images; mm += kGroups) {
      const int h = classes[(int64_t)mm * kOrderClasses + c];
      tot += h;
      if (mm < m) bef += h;
    }
    part[0][g][c] = tot;
    part[1][g][c] = bef;
  }
  __syncthreads();
  if (tid < kOrderClasses) {
    int tot = 0;
    for (int g = 0; g < kGroups; ++g) tot += part[0][g][tid];
    part[0][0][tid] = tot;  // (each class's column is read and written by its own thread only)
  }
  __syncthreads();
  if (tid < kOrderClasses) {
    int heavier = 0, bef = 0;
    for (int c = kOrderClasses - 1; c > tid; --c) heavier += part[0][0][c];
    for (int g = 0; g < kGroups; ++g) bef += part[1][g][tid];
    base[tid] = heavier + bef;  // this image's first place in class tid
    if (tid == 0) s_used = heavier + part[0][0][0];
  }
  for (int64_t r0 = 0; r0 < T; r0 += kPlanThreads) {
    const int64_t t = r0 + tid, gt = gt0 + t;
    int ns = 0, cls = -1;
    if (t < T) {
      ns = plan[gt].x;
      cls = order_class(tile_count(offsets, gt, G, n_isects), ns);
    }
    for (int e = tid; e < kPlanWarps * kOrderClasses; e += kPlanThreads) (&wsum[0][0])[e] = 0;
    // items of the lower lanes of this warp in the same class
    const unsigned peers = __match_any_sync(0xffffffffu, cls);
    int below = 0;
    for (int l = 0; l < 32; ++l) {
      const int v = __shfl_sync(0xffffffffu, ns, l);
      if (l < lane && ((peers >> l) & 1u)) below += v;
    }
    __syncthreads();  // wsum zeroed (and base / the previous round's reads done)
    if (cls >= 0 && lane == 31 - __clz(peers)) wsum[warp][cls] = below + ns;
    __syncthreads();
    if (tid < kOrderClasses) {  // offsets of the warps within the class, after the earlier rounds
      int run = base[tid];
      for (int w = 0; w < kPlanWarps; ++w) {
        const int v = wsum[w][tid];
        wsum[w][tid] = run;
        run += v;
      }
      base[tid] = run;
    }
    __syncthreads();
    if (cls >= 0) {
      const int pos = wsum[warp][cls] + below;
      for (int k = 0; k < ns; ++k) work[pos + k] = (int32_t)(gt * kMaxSplit + k);
    }
    __syncthreads();  // wsum read before the next round zeroes it
  }
  for (int64_t i = s_used + (int64_t)m * kPlanThreads + tid; i < items_max; i += (int64_t)images * kPlanThreads)
    work[i] = -1;
}

}  // namespace

cudaError_t launch_split_plan(const int32_t* tile_offsets, int64_t G, int64_t images, int64_t n_isects,
                              const int32_t* n_isects_dev, int64_t pool, int32_t* state, cudaStream_t stream) {
  if (G == 0 || images == 0) return cudaSuccess;
  if (G % images != 0 || pool % images != 0 || images > 0x7fffffff) return cudaErrorInvalidValue;
  const Split sp = split_view(state, G, pool, 1);
  int2* plan = reinterpret_cast<int2*>(state);
  int32_t* work = state + 2 * G;
  // the class counts live in the slots until the render writes them (>= 64 words per image: P >= 1
  // slot of >= 32 pixels x >= 2 words)
  int32_t* classes = reinterpret_cast<int32_t*>(sp.slots);
  split_plan_kernel<<<(unsigned)images, kPlanThreads, 0, stream>>>(tile_offsets, G, G / images, (int32_t)n_isects,
                                                                   n_isects_dev, (int)pool, (int)(pool / images), plan,
                                                                   sp.counters, classes);
  split_order_kernel<<<(unsigned)images, kPlanThreads, 0, stream>>>(tile_offsets, G, G / images, (int32_t)n_isects,
                                                                    n_isects_dev, (int)images, G + pool, plan, classes, work);
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
