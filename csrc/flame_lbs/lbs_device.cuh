// Device helpers shared by the LBS CUDA kernels (flame_lbs_fwd.cu, flame_lbs_bwd.cu,
// skin_gaussians_bwd.cu). CUDA-only: include from .cu files.
#pragma once
#include <cuda_runtime.h>

namespace ffa {
namespace lbs {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// dst[e] = get(e) for e < n over the block, kFill loads issued before their stores (one memory
// latency per kFill elements per thread instead of one per element).
constexpr int kFill = 8;
template <typename F>
__device__ __forceinline__ void fill_smem(float* dst, int n, F get) {
  for (int e0 = threadIdx.x; e0 < n; e0 += kFill * blockDim.x) {
    float v[kFill];
#pragma unroll
    for (int u = 0; u < kFill; ++u) {
      const int e = e0 + u * blockDim.x;
      v[u] = e < n ? get(e) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kFill; ++u) {
      const int e = e0 + u * blockDim.x;
      if (e < n) dst[e] = v[u];
    }
  }
}

}  // namespace lbs
}  // namespace ffa
