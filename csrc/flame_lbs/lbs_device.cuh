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

// The K anchors of a Gaussian in one frame of v_posed [V,kVP] (16-byte aligned, written by an earlier
// kernel: read-only path): one 16-byte gather each. Issued apart from their use so a caller can
// have the next frame's gathers in flight while it computes this one.
template <int KT, typename I>
__device__ __forceinline__ void gather_anchors4(const I (&id)[KT], const float* __restrict__ vp, float4 (&g)[KT]) {
  static_assert(kVP == 4, "v_posed rows must be float4");
#pragma unroll
  for (int k = 0; k < KT; ++k) g[k] = __ldg(reinterpret_cast<const float4*>(vp) + id[k]);
}

// p = o + sum_k w_k g_k (anchor_point's summation order, lbs_math.h).
template <int KT>
__device__ __forceinline__ void anchor_point_from(const float4 (&g)[KT], const float (&w)[KT], const float (&o)[3],
                                                  float (&p)[3]) {
#pragma unroll
  for (int c = 0; c < 3; ++c) p[c] = o[c];
#pragma unroll
  for (int k = 0; k < KT; ++k) {
    p[0] += w[k] * g[k].x; p[1] += w[k] * g[k].y; p[2] += w[k] * g[k].z;
  }
}

// anchor_point with the gathers of gather_anchors4; off: the Gaussian's offset [3] or null.
template <int KT, typename I>
__device__ __forceinline__ void anchor_point4(const I (&id)[KT], const float (&w)[KT], const float* __restrict__ vp,
                                              const float* __restrict__ off, float (&p)[3]) {
  float4 g[KT];
  gather_anchors4<KT>(id, vp, g);
  const float o[3] = {off ? off[0] : 0.f, off ? off[1] : 0.f, off ? off[2] : 0.f};
  anchor_point_from<KT>(g, w, o, p);
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

// Shape blend of vertex v for the BT frames of the chunk: acc[bt][c] = this lane's share of
// sum_s shapedirs[v,c,s] betas[bt,s] (reduced over the warp in finish_vertex). The three rows of the
// vertex are loaded together so each betas value read from smem serves 3 FMAs; VEC4: float4 loads
// of shapedirs and betas (S % 4 == 0, 16 B aligned).
template <int BT, bool VEC4>
__device__ __forceinline__ void blend_shape(const float* __restrict__ sd, const float* s_b, int v, int S, int lane,
                                            float (&acc)[BT][3]) {
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) acc[bt][0] = acc[bt][1] = acc[bt][2] = 0.f;
  const float* row = sd + (int64_t)v * 3 * S;
  if (VEC4) {
    const int S4 = S >> 2;
    const float4* r0 = reinterpret_cast<const float4*>(row);
    const float4* r1 = reinterpret_cast<const float4*>(row + S);
    const float4* r2 = reinterpret_cast<const float4*>(row + 2 * S);
    const float4* sb4 = reinterpret_cast<const float4*>(s_b);
#pragma unroll 2
    for (int s4 = lane; s4 < S4; s4 += kWarp) {
      const float4 x0 = __ldg(r0 + s4), x1 = __ldg(r1 + s4), x2 = __ldg(r2 + s4);
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        const float4 bb = sb4[bt * S4 + s4];
        acc[bt][0] += x0.x * bb.x + x0.y * bb.y + x0.z * bb.z + x0.w * bb.w;
        acc[bt][1] += x1.x * bb.x + x1.y * bb.y + x1.z * bb.z + x1.w * bb.w;
        acc[bt][2] += x2.x * bb.x + x2.y * bb.y + x2.z * bb.z + x2.w * bb.w;
      }
    }
  } else {
#pragma unroll 4
    for (int s = lane; s < S; s += kWarp) {
      const float x0 = __ldg(row + s), x1 = __ldg(row + S + s), x2 = __ldg(row + 2 * S + s);
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        const float bb = s_b[bt * S + s];
        acc[bt][0] += x0 * bb; acc[bt][1] += x1 * bb; acc[bt][2] += x2 * bb;
      }
    }
  }
}

// Pose correctives of vertex v added to the lane's partial sums: acc[bt][c] += sum over this lane's
// p of posedirs[p, 3v + c] * pf[bt, p] (pf: pose features R_j - I of the BT frames, [BT,P] in smem).
template <int BT>
__device__ __forceinline__ void add_pose_correctives(const float* __restrict__ pd, const float* s_pf, int v, int V,
                                                     int P, int lane, float (&acc)[BT][3]) {
  for (int p = lane; p < P; p += kWarp) {
    const float* col = pd + (int64_t)p * V * 3 + (int64_t)v * 3;
    float x0 = __ldg(col), x1 = __ldg(col + 1), x2 = __ldg(col + 2);
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
      float f = s_pf[bt * P + p];
      acc[bt][0] += x0 * f; acc[bt][1] += x1 * f; acc[bt][2] += x2 * f;
    }
  }
}

// M [12] = sum_j wg_j A_j (rows 0..2) with A: one frame's [J,16] in shared memory (float4 broadcast
// reads; blend_transform's order, so forward and backward compute the same M bit for bit).
template <int JT>
__device__ __forceinline__ void blend_wg_transform(const float (&wg)[JT], const float* sA, int J, float (&M)[12]) {
#pragma unroll
  for (int e = 0; e < 12; ++e) M[e] = 0.f;
#pragma unroll
  for (int j = 0; j < JT; ++j) {
    if (j < J) {
      const float4* Aj = reinterpret_cast<const float4*>(sA + j * 16);
#pragma unroll
      for (int r = 0; r < 3; ++r) {
        const float4 a = Aj[r];
        M[r * 4 + 0] += wg[j] * a.x; M[r * 4 + 1] += wg[j] * a.y;
        M[r * 4 + 2] += wg[j] * a.z; M[r * 4 + 3] += wg[j] * a.w;
      }
    }
  }
}

// One anchored Gaussian in one frame (forward): M = sum_j wg_j A_j (A: the frame's [J,16] in shared
// memory, float4 broadcast reads; blend_transform's order), the anchored point from its gathered
// anchors g and offset o, Shepperd, stores of mean [3] and quat [4] (16-byte aligned: one float4 store).
template <int KT, int JT>
__device__ __forceinline__ void gaussian_frame_fwd(const float4 (&g)[KT], const float (&w)[KT], const float (&wg)[JT],
                                                   const float (&qc)[4], const float (&o)[3], const float* sA, int J,
                                                   bool means_only, float* __restrict__ mean,
                                                   float* __restrict__ quat) {
  float M[12], p[3], m[3], q[4];
  blend_wg_transform<JT>(wg, sA, J, M);
  anchor_point_from<KT>(g, w, o, p);
  gaussian_pose(M, p, qc, means_only, m, q);
  for (int c = 0; c < 3; ++c) mean[c] = m[c];
  *reinterpret_cast<float4*>(quat) = make_float4(q[0], q[1], q[2], q[3]);
}

}  // namespace lbs
}  // namespace ffa
