// Device helpers shared by the LBS CUDA kernels (flame_lbs_fwd.cu, flame_lbs_bwd.cu,
// skin_gaussians_bwd.cu). CUDA-only: include from .cu files.
#pragma once
#include <cuda_runtime.h>

#include "common/lbs_math.h"

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

// anchor_point (lbs_math.h, same summation order) with one 16-byte gather per anchor: vp is one
// frame of v_posed [V,kVP], 16-byte aligned.
template <int KT, typename I>
__device__ __forceinline__ void anchor_point4(const I (&id)[KT], const float (&w)[KT], const float* __restrict__ vp,
                                              const float* __restrict__ off, float (&p)[3]) {
  static_assert(kVP == 4, "v_posed rows must be float4");
#pragma unroll
  for (int c = 0; c < 3; ++c) p[c] = off ? off[c] : 0.f;
#pragma unroll
  for (int k = 0; k < KT; ++k) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(vp) + id[k]);
    p[0] += w[k] * v.x; p[1] += w[k] * v.y; p[2] += w[k] * v.z;
  }
}

// Joint weights of a Gaussian: the precomputed row wgp [J] (coalesced across the warp's Gaussians)
// or sum_k w_k W[i_k] gathered (anchor_joint_weights' order). Zeros for !valid.
template <int KT, int JT, typename I>
__device__ __forceinline__ void gaussian_joint_weights(const float* __restrict__ wgp, const float* __restrict__ W,
                                                       const I (&id)[KT], const float (&w)[KT], int J, bool valid,
                                                       float (&wg)[JT]) {
#pragma unroll
  for (int j = 0; j < JT; ++j) wg[j] = (wgp && j < J && valid) ? __ldg(wgp + j) : 0.f;
  if (wgp) return;
#pragma unroll
  for (int k = 0; k < KT; ++k) {
    const float* Wk = W + (int64_t)id[k] * J;
#pragma unroll
    for (int j = 0; j < JT; ++j)
      if (j < J && valid) wg[j] += w[k] * __ldg(Wk + j);
  }
}

// Adds g (3 values; the pad column gets 0) to row `row` of a [.., kVP] float buffer: one float4
// atomic on sm_90, three scalar ones before.
__device__ __forceinline__ void atomic_add_row4(float* __restrict__ base, int64_t row, float g0, float g1, float g2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(base) + row, make_float4(g0, g1, g2, 0.f));
#else
  float* d = base + row * kVP;
  atomicAdd(d, g0); atomicAdd(d + 1, g1); atomicAdd(d + 2, g2);
#endif
}

}  // namespace lbs
}  // namespace ffa
