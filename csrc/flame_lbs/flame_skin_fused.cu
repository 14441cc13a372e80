// One-frame forward of skin_gaussians (flame_skin_gaussians op) in two launches instead of three, for
// the real-time animation case (B = 1, no autograd):
//   (1) vposed_one_kernel: every block puts betas and the pose features R_j - I in shared memory
//       (Rodrigues per block: J rotations, cheaper than waiting for the joints kernel); the last block
//       runs the rest joints (J_template + J_dirs . betas) and the kinematic chain and writes A [J,16]
//       and joints; the other blocks blend the base vertices, one warp per vertex with every
//       shapedirs / posedirs load of the vertex in flight at once -> v_posed [V,kVP] (the summation
//       order of the vertex kernel at BT = 1, so v_posed is bitwise the same). It triggers its
//       dependents at once and is sized to two blocks per SM, so
//   (2) the Gaussian kernel (gaussians_fwd_kernel, programmatic dependent launch) becomes resident
//       while (1) streams shapedirs, loads its anchors / joint weights / quaternions, and waits only
//       before it reads v_posed and A.
// (A single cooperative kernel with a grid barrier was measured first: the cooperative launch cost
// ~4.5 µs per call in CUDA-graph replay on the H200, more than the second launch does.)
#include <algorithm>

#include "common/pdl.cuh"
#include "flame_lbs/flame_lbs.h"
#include "flame_lbs/lbs_device.cuh"

namespace ffa {
namespace lbs {
namespace {

constexpr int kFusedThreads = 256;
constexpr int kFusedBlocksPerSM = 2;  // leaves room for the Gaussian kernel's blocks (PDL)

struct FusedSmem {  // float offsets into the dynamic shared buffer: betas [S], rot [J,9], pose features
  int b, rot, pf, rest, G, total;  // [P], rest joints [J,3], chain scratch [J,12]
  __host__ __device__ FusedSmem(int J, int S) {
    b = 0;
    rot = (S + 3) & ~3;
    pf = rot + J * 9;
    rest = pf + (J - 1) * 9;
    G = rest + J * 3;
    total = G + J * 12;
  }
};

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

template <bool VEC4>
__global__ void __launch_bounds__(kFusedThreads) vposed_one_kernel(
    const float* __restrict__ betas, const float* __restrict__ pose, bool is_matrix, const float* __restrict__ Jt,
    const float* __restrict__ Jd, Parents par, const float* __restrict__ vt, const float* __restrict__ sd,
    const float* __restrict__ pd, int V, int J, int S, float* __restrict__ v_posed, float* __restrict__ joints,
    float* __restrict__ A) {
  extern __shared__ __align__(16) float smem[];
  pdl_trigger();  // the Gaussian kernel's prologue reads inputs only
  const FusedSmem L(J, S);
  float *s_b = smem + L.b, *s_rot = smem + L.rot, *s_pf = smem + L.pf;
  const int P = (J - 1) * 9, tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp, nw = blockDim.x / kWarp;
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
    if (gridDim.x > 1) return;
  }
  for (int e = tid; e < P; e += blockDim.x) {
    const int k = e % 9;
    s_pf[e] = s_rot[9 + e] - ((k == 0 || k == 4 || k == 8) ? 1.f : 0.f);
  }
  __syncthreads();
  const int vblocks = gridDim.x > 1 ? gridDim.x - 1 : 1;
  for (int v = blockIdx.x * nw + warp; v < V; v += vblocks * nw) {
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
}

template <bool VEC4>
cudaError_t launch_vposed_one(const float* betas, const float* pose, bool is_matrix, const float* Jt,
                              const float* Jd, const Parents& par, const float* vt, const float* sd, const float* pd,
                              int V, int J, int S, float* v_posed, float* joints, float* A, cudaStream_t stream) {
  auto kernel = vposed_one_kernel<VEC4>;
  const size_t smem = sizeof(float) * (size_t)FusedSmem(J, S).total;
  if (smem > 48 * 1024)
    FFA_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  int dev = 0, sms = 0;
  FFA_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev));
  FFA_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int per_block = kFusedThreads / kWarp;
  const int blocks = std::min((V + per_block - 1) / per_block, kFusedBlocksPerSM * sms) + 1;  // + the joints block
  kernel<<<blocks, kFusedThreads, smem, stream>>>(betas, pose, is_matrix, Jt, Jd, par, vt, sd, pd, V, J, S, v_posed,
                                                  joints, A);
  return cudaGetLastError();
}

}  // namespace

template <typename I>
cudaError_t launch_skin_fused(const FusedArgs<I>& a, cudaStream_t stream) {
  if (a.J > kFusedMaxJoints) return cudaErrorInvalidValue;
  if (a.V > 0 || a.J > 0) {
    const bool vec4 = a.S % 4 == 0 && reinterpret_cast<uintptr_t>(a.shapedirs) % 16 == 0;
    auto launch = vec4 ? launch_vposed_one<true> : launch_vposed_one<false>;
    FFA_RETURN_IF_CUDA_ERROR(launch(a.betas, a.pose, a.pose_is_matrix, a.J_template, a.J_dirs, a.parents, a.v_template,
                                    a.shapedirs, a.posedirs, a.V, a.J, a.S, a.v_posed, a.joints, a.A, stream));
  }
  return launch_gaussians_fwd<I>(a.v_posed, a.A, a.W, a.wg, a.idx, a.aw, a.offsets, false, a.quats, a.means_only, 1,
                                 a.V, a.J, a.N, a.K, a.means, a.qout, /*pdl=*/true, stream);
}

template cudaError_t launch_skin_fused<int32_t>(const FusedArgs<int32_t>&, cudaStream_t);
template cudaError_t launch_skin_fused<int64_t>(const FusedArgs<int64_t>&, cudaStream_t);

}  // namespace lbs
}  // namespace ffa
