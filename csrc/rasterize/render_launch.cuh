// The render kernels' launch plumbing, shared by the forward and the backward (rasterize_fwd.cu,
// rasterize_bwd.cu). Each side describes its kernel family in a small traits struct K:
//
//   struct K {
//     template <int CH> static auto kernel() { return &render_xxx_kernel<CH>; }  // CH colour channels
//     template <int CH> static size_t shmem(int nt);  // dynamic shared memory of a block of nt threads
//   };
//
// and gets: threads_per_block(d), max_chunk<K>(nt) (the largest channel chunk whose kernel fits, per
// device, computed once each), launch_chunk<K, CH>(d, sp, stream, args...) (opt-in shared memory
// above 48 KiB, the launch, its error) and for_each_chunk<K>(d, launch) (the channel loop).
// Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/per_device_cache.cuh"
#include "rasterize/rasterize.h"
#include "rasterize/rasterize_split.h"

namespace ffa {
namespace rasterize {

// One thread per tile pixel, rounded up to whole warps.
inline int threads_per_block(const Dims& d) { return ((d.tile_size * d.tile_size + 31) / 32) * 32; }

// Whether K's CH-channel kernel can run with nt threads per block: register budget (e.g. 32x32 tiles
// have 1024 threads, which the 32-channel instantiations may not fit) and shared memory (against the
// device's opt-in limit).
template <class K, int CH>
bool chunk_fits(int nt) {
  cudaFuncAttributes a;
  if (cudaFuncGetAttributes(&a, K::template kernel<CH>()) != cudaSuccess) return false;
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return false;
  return a.maxThreadsPerBlock >= nt && a.sharedSizeBytes + K::template shmem<CH>(nt) <= (size_t)optin;
}

// Largest channel chunk (32, 16, ..., 1) of K that fits nt threads. Per device (the limits differ
// between GPUs) and by warps per block (nt <= 1024); computed once each, safe across host threads.
template <class K>
int max_chunk(int nt) {
  static PerDeviceCache<33> cache;
  return cache.get(nt / 32, [nt] {
    const int c = chunk_fits<K, 32>(nt) ? 32 : chunk_fits<K, 16>(nt) ? 16 : chunk_fits<K, 8>(nt) ? 8
                : chunk_fits<K, 4>(nt) ? 4 : chunk_fits<K, 2>(nt) ? 2 : 1;
    (void)cudaGetLastError();  // clear a failed attribute query
    return c;
  });
}

// Launch K's CH-channel kernel over the work list of (d, sp) on `stream`.
template <class K, int CH, class... Args>
cudaError_t launch_chunk(const Dims& d, const Split& sp, cudaStream_t stream, Args... args) {
  const int nt = threads_per_block(d);
  const int64_t blocks = split_blocks(d, sp);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const size_t shmem = K::template shmem<CH>(nt);
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(K::template kernel<CH>(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)shmem);
    if (e != cudaSuccess) return e;
  }
  K::template kernel<CH>()<<<(unsigned)blocks, nt, shmem, stream>>>(args...);
  return cudaGetLastError();
}

// The channel loop: launch(std::integral_constant<int, CH>{}, chan0, nch) for each chunk of d.D
// channels (one pass at least: D == 0 still needs the alphas), CH = the smallest instantiation that
// holds nch channels; stops at the first error.
template <class K, class Launch>
cudaError_t for_each_chunk(const Dims& d, Launch&& launch) {
  const int chunk = max_chunk<K>(threads_per_block(d));
  int64_t chan0 = 0;
  do {
    const int nch = (int)(d.D - chan0 < chunk ? d.D - chan0 : chunk);
    const int c0 = (int)chan0;
    cudaError_t e = nch <= 1   ? launch(std::integral_constant<int, 1>{}, c0, nch)
                    : nch == 2 ? launch(std::integral_constant<int, 2>{}, c0, nch)
                    : nch == 3 ? launch(std::integral_constant<int, 3>{}, c0, nch)
                    : nch == 4 ? launch(std::integral_constant<int, 4>{}, c0, nch)
                    : nch <= 8 ? launch(std::integral_constant<int, 8>{}, c0, nch)
                    : nch <= 16 ? launch(std::integral_constant<int, 16>{}, c0, nch)
                                : launch(std::integral_constant<int, 32>{}, c0, nch);
    if (e != cudaSuccess) return e;
    chan0 += chunk;
  } while (chan0 < d.D);
  return cudaSuccess;
}

}  // namespace rasterize
}  // namespace ffa
