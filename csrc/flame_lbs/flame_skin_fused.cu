// Fused one-frame forward of skin_gaussians (flame_skin_gaussians op): joints, the shape / pose blend
// of the base vertices and the anchored Gaussians in ONE cooperative launch with one grid barrier,
// for the real-time animation case (B = 1, no autograd). The three-kernel path (flame_lbs_fwd.cu)
// pays three dependent launches of 5-10 µs each at B = 1; here:
//   phase 0 (every block): betas and the pose features R_j - I into shared memory (Rodrigues per
//     block: J rotations, cheaper than waiting for another block); the last block also runs the
//     kinematic chain (rest joints from J_template / J_dirs) and writes A [J,16] and joints.
//     Every thread loads its first Gaussian's anchors, weights, joint weights and quaternion, so
//     those loads overlap the vertex phase.
//   phase 1: one warp per base vertex (grid-stride): shapedirs blend + pose correctives -> v_posed
//     [V,kVP] (the summation order of the vertex kernel at BT = 1, so v_posed is bitwise the same).
//   grid barrier (cooperative_groups; the launch is cooperative, so every block is resident)
//   phase 2: A into shared memory, then one thread per Gaussian (grid-stride): gaussian_frame_fwd.
// Data written before the barrier (v_posed, A) is read with ld.global.cg (L2, coherent), never
// through the read-only path.
#include <cooperative_groups.h>

#include <algorithm>

#include "flame_lbs/flame_lbs.h"
#include "flame_lbs/lbs_device.cuh"

namespace ffa {
namespace lbs {
namespace {

namespace cg = cooperative_groups;
constexpr int kFusedThreads = 256;

struct FusedSmem {  // float offsets into the dynamic shared buffer
  int b, A, rot, pf, rest, G, total;
  __host__ __device__ FusedSmem(int J, int S) {
    b = 0;
    A = (S + 3) & ~3;  // float4 reads of s_A and s_b need 16-byte offsets
    rot = A + J * 16;
    pf = rot + J * 9;
    rest = pf + (J - 1) * 9;
    G = rest + J * 3;
    total = G + J * 12;
  }
};

template <int KT, int JT, typename I>
__device__ __forceinline__ void gaussian_inputs(int64_t n, bool valid, const I* __restrict__ idx,
                                                const float* __restrict__ aw, const float* __restrict__ wgp,
                                                const float* __restrict__ W, const float* __restrict__ quats, int J,
                                                I (&id)[KT], float (&w)[KT], float (&wg)[JT], float (&qc)[4]) {
#pragma unroll
  for (int k = 0; k < KT; ++k) {
    id[k] = valid ? idx[n * KT + k] : I(0);
    w[k] = valid ? aw[n * KT + k] : 0.f;
  }
  gaussian_joint_weights<KT, JT>(wgp ? wgp + n * J : nullptr, W, id, w, J, valid, wg);
  canonical_quat(valid && quats ? quats + n * 4 : nullptr, qc);
}

// One vertex, one frame, float4 shapedirs (S4 = S/4 <= kWarp*U) and P <= 2*kWarp: every shapedirs and
// posedirs load of the vertex is issued before the first FMA (one memory round trip per vertex
// instead of 3-4 in blend_shape's loop). Same summation order as blend_shape<1, true> followed by
// add_pose_correctives<1> (lane's s4 ascending, then its p ascending).
template <int U>
__device__ __forceinline__ void blend_vertex_one(const float* __restrict__ sd, const float* __restrict__ pd,
                                                 const float* s_b, const float* s_pf, int v, int V, int S, int P,
                                                 int lane, float (&acc)[3]) {
  const int S4 = S >> 2;
  const float4* row = reinterpret_cast<const float4*>(sd + (int64_t)v * 3 * S);
  float4 x[U][3];
  float y[2][3];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int s4 = lane + u * kWarp;
#pragma unroll
    for (int r = 0; r < 3; ++r) x[u][r] = s4 < S4 ? __ldg(row + r * S4 + s4) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int p = lane + u * kWarp;
    const float* col = pd + (int64_t)p * V * 3 + (int64_t)v * 3;
#pragma unroll
    for (int c = 0; c < 3; ++c) y[u][c] = p < P ? __ldg(col + c) : 0.f;
  }
  const float4* sb4 = reinterpret_cast<const float4*>(s_b);
  acc[0] = acc[1] = acc[2] = 0.f;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int s4 = lane + u * kWarp;
    if (s4 < S4) {
      const float4 bb = sb4[s4];
#pragma unroll
      for (int r = 0; r < 3; ++r)
        acc[r] += x[u][r].x * bb.x + x[u][r].y * bb.y + x[u][r].z * bb.z + x[u][r].w * bb.w;
    }
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int p = lane + u * kWarp;
    if (p < P) {
      const float f = s_pf[p];
#pragma unroll
      for (int c = 0; c < 3; ++c) acc[c] += y[u][c] * f;
    }
  }
}
constexpr int kFusedS4 = 4;  // blend_vertex_one handles S <= 4 * kWarp * kFusedS4 = 512

template <typename I, int KT, int JT, bool VEC4>
__global__ void __launch_bounds__(kFusedThreads, 3) skin_fused_kernel(
    const float* __restrict__ betas, const float* __restrict__ pose, bool is_matrix, const float* __restrict__ Jt,
    const float* __restrict__ Jd, Parents par, const float* __restrict__ vt, const float* __restrict__ sd,
    const float* __restrict__ pd, const float* __restrict__ W, const float* __restrict__ wgp,
    const I* __restrict__ idx, const float* __restrict__ aw, const float* __restrict__ off,
    const float* __restrict__ quats, bool means_only, int V, int J, int S, int N, float* v_posed, float* joints,
    float* A, float* __restrict__ means, float* __restrict__ qout) {
  extern __shared__ __align__(16) float smem[];
  const FusedSmem L(J, S);
  float *s_b = smem + L.b, *s_A = smem + L.A, *s_rot = smem + L.rot, *s_pf = smem + L.pf;
  const int P = (J - 1) * 9, tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, nw = blockDim.x / kWarp;
  cg::grid_group grid = cg::this_grid();

  // ---- phase 0 ----
  for (int e = tid; e < S; e += blockDim.x) s_b[e] = betas[e];
  for (int j = tid; j < J; j += blockDim.x) {
    float* R = s_rot + j * 9;
    if (is_matrix) {
      for (int i = 0; i < 9; ++i) R[i] = pose[j * 9 + i];
    } else {
      rodrigues(pose + j * 3, R);
    }
  }
  __syncthreads();
  for (int e = tid; e < P; e += blockDim.x) {
    const int k = e % 9;
    s_pf[e] = s_rot[9 + e] - ((k == 0 || k == 4 || k == 8) ? 1.f : 0.f);
  }
  if (blockIdx.x == gridDim.x - 1) {  // rest joints (one warp per coordinate) and the chain
    float* s_rest = smem + L.rest;
    for (int o = warp; o < J * 3; o += nw) {
      float acc = 0.f;
      for (int s = lane; s < S; s += kWarp) acc += Jd[(int64_t)o * S + s] * s_b[s];
      acc = warp_sum(acc);
      if (lane == 0) s_rest[o] = Jt[o] + acc;
    }
    __syncthreads();
    if (tid == 0) chain_forward(J, par, s_rot, s_rest, smem + L.G, joints, A);
  }
  const int64_t stride = (int64_t)gridDim.x * blockDim.x, n0 = (int64_t)blockIdx.x * blockDim.x + tid;
  I id[KT];
  float w[KT], wg[JT], qc[4];
  gaussian_inputs<KT, JT>(n0, n0 < N, idx, aw, wgp, W, quats, J, id, w, wg, qc);
  __syncthreads();

  // ---- phase 1: v_posed (blocks 0 .. G-2: the last one is busy with the chain, which the barrier
  // would otherwise wait for on top of its share of vertices) ----
  const int vblocks = gridDim.x > 1 ? gridDim.x - 1 : 1;
  for (int v = blockIdx.x * nw + warp; blockIdx.x < vblocks && v < V; v += vblocks * nw) {
    float acc[1][3];
    if (VEC4 && S <= 4 * kWarp * kFusedS4 && P <= 2 * kWarp) {
      blend_vertex_one<kFusedS4>(sd, pd, s_b, s_pf, v, V, S, P, lane, acc[0]);
    } else {
      blend_shape<1, VEC4>(sd, s_b, v, S, lane, acc);
      add_pose_correctives<1>(pd, s_pf, v, V, P, lane, acc);
    }
#pragma unroll
    for (int c = 0; c < 3; ++c) acc[0][c] = warp_sum(acc[0][c]);
    if (lane == 0)
      reinterpret_cast<float4*>(v_posed)[v] =
          make_float4(vt[v * 3] + acc[0][0], vt[v * 3 + 1] + acc[0][1], vt[v * 3 + 2] + acc[0][2], 0.f);
  }

  grid.sync();

  // ---- phase 2: Gaussians ----
  for (int e = tid; e < J * 16; e += blockDim.x) s_A[e] = __ldcg(A + e);
  __syncthreads();
  for (int64_t n = n0; n < N; n += stride) {
    if (n != n0) gaussian_inputs<KT, JT>(n, true, idx, aw, wgp, W, quats, J, id, w, wg, qc);
    gaussian_frame_fwd<KT, JT, true>(id, w, wg, qc, s_A, J, v_posed, off ? off + n * 3 : nullptr, means_only,
                                     means + n * 3, qout + n * 4);
  }
}

template <typename I, int KT, bool VEC4>
cudaError_t launch_fused_k(const FusedArgs<I>& a, cudaStream_t stream) {
  auto kernel = skin_fused_kernel<I, KT, 8, VEC4>;
  const size_t smem = sizeof(float) * (size_t)FusedSmem(a.J, a.S).total;
  if (smem > 48 * 1024)
    FFA_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  int dev = 0, sms = 0, occ = 0, coop = 0;
  FFA_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev));
  FFA_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  FFA_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  FFA_RETURN_IF_CUDA_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, kFusedThreads, smem));
  if (!coop || occ < 1) return cudaErrorCooperativeLaunchTooLarge;
  // enough warps for one vertex each and threads for one Gaussian each, capped to the resident blocks
  const int64_t want = std::max<int64_t>((a.V + kFusedThreads / kWarp - 1) / (kFusedThreads / kWarp),
                                         ((int64_t)a.N + kFusedThreads - 1) / kFusedThreads);
  const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>(want, (int64_t)sms * occ));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(kFusedThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, a.betas, a.pose, a.pose_is_matrix, a.J_template, a.J_dirs, a.parents,
                            a.v_template, a.shapedirs, a.posedirs, a.W, a.wg, a.idx, a.aw, a.offsets, a.quats,
                            a.means_only, a.V, a.J, a.S, a.N, a.v_posed, a.joints, a.A, a.means, a.qout);
}

}  // namespace

template <typename I>
cudaError_t launch_skin_fused(const FusedArgs<I>& a, cudaStream_t stream) {
  if (a.N == 0 && a.V == 0) return cudaSuccess;
  if (a.J > kFusedMaxJoints) return cudaErrorInvalidValue;
  const bool vec4 = a.S % 4 == 0 && reinterpret_cast<uintptr_t>(a.shapedirs) % 16 == 0;
#define FFA_LBS_FUSED(KT) \
  return vec4 ? launch_fused_k<I, KT, true>(a, stream) : launch_fused_k<I, KT, false>(a, stream)
  switch (a.K) {
    case 1: FFA_LBS_FUSED(1);
    case 2: FFA_LBS_FUSED(2);
    case 3: FFA_LBS_FUSED(3);
    case 4: FFA_LBS_FUSED(4);
    default: return cudaErrorInvalidValue;
  }
#undef FFA_LBS_FUSED
}

template cudaError_t launch_skin_fused<int32_t>(const FusedArgs<int32_t>&, cudaStream_t);
template cudaError_t launch_skin_fused<int64_t>(const FusedArgs<int64_t>&, cudaStream_t);

}  // namespace lbs
}  // namespace ffa
