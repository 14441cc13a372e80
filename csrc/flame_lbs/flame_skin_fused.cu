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

#include "common/bulk_copy.cuh"
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

// One vertex, one frame, float4 shapedirs (S4 = S/4 <= kWarp*U) and P <= 2*kWarp, in two steps so the
// shapedirs row can come from global memory (blend_vertex_one) or from a shared-memory copy
// (vposed_bulk_kernel) with the same arithmetic. Same summation order as blend_shape<1, true>
// followed by add_pose_correctives<1> (lane's s4 ascending, then its p ascending).
__device__ __forceinline__ void load_pose_rows(const float* __restrict__ pd, int v, int V, int P, int lane,
                                               float (&y)[2][3]) {
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int p = lane + u * kWarp;
    const float* col = pd + (int64_t)p * V * 3 + (int64_t)v * 3;
#pragma unroll
    for (int c = 0; c < 3; ++c) y[u][c] = p < P ? __ldg(col + c) : 0.f;
  }
}

// row: the vertex's shapedirs [3,S4] as float4 (global or shared); y from load_pose_rows.
template <int U, bool GLOBAL>
__device__ __forceinline__ void dot_vertex(const float4* row, const float (&y)[2][3], const float* s_b,
                                           const float* s_pf, int S, int P, int lane, float (&acc)[3]) {
  const int S4 = S >> 2;
  float4 x[U][3];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int s4 = lane + u * kWarp;
#pragma unroll
    for (int r = 0; r < 3; ++r)
      x[u][r] = s4 < S4 ? (GLOBAL ? __ldg(row + r * S4 + s4) : row[r * S4 + s4]) : make_float4(0.f, 0.f, 0.f, 0.f);
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

// Every shapedirs and posedirs load of the vertex is issued before the first FMA (one memory round
// trip per vertex instead of 3-4 in blend_shape's loop).
template <int U>
__device__ __forceinline__ void blend_vertex_one(const float* __restrict__ sd, const float* __restrict__ pd,
                                                 const float* s_b, const float* s_pf, int v, int V, int S, int P,
                                                 int lane, float (&acc)[3]) {
  float y[2][3];
  load_pose_rows(pd, v, V, P, lane, y);
  dot_vertex<U, true>(reinterpret_cast<const float4*>(sd + (int64_t)v * 3 * S), y, s_b, s_pf, S, P, lane, acc);
}
constexpr int kFusedS4 = 4;  // blend_vertex_one handles S <= 4 * kWarp * kFusedS4 = 512

// The per-frame setup shared by both v_posed kernels: betas and the joint rotations in shared memory;
// the last block computes the rest joints and the chain (joints, A) and returns true when it has no
// vertices (gridDim > 1); every other block gets the pose features. Ends with a block barrier.
__device__ __forceinline__ bool fused_setup(const float* __restrict__ betas, const float* __restrict__ pose,
                                            bool is_matrix, const float* __restrict__ Jt, const float* __restrict__ Jd,
                                            const Parents& par, int J, int S, float* smem, float* __restrict__ joints,
                                            float* __restrict__ A) {
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
    if (gridDim.x > 1) return true;
  }
  for (int e = tid; e < P; e += blockDim.x) {
    const int k = e % 9;
    s_pf[e] = s_rot[9 + e] - ((k == 0 || k == 4 || k == 8) ? 1.f : 0.f);
  }
  __syncthreads();
  return false;
}

__device__ __forceinline__ void store_vposed(const float* __restrict__ vt, int v, int lane, float (&acc)[3],
                                             float* __restrict__ v_posed) {
#pragma unroll
  for (int c = 0; c < 3; ++c) acc[c] = warp_sum(acc[c]);
  if (lane == 0)
    reinterpret_cast<float4*>(v_posed)[v] =
        make_float4(vt[v * 3] + acc[0], vt[v * 3 + 1] + acc[1], vt[v * 3 + 2] + acc[2], 0.f);
}

template <bool VEC4>
__global__ void __launch_bounds__(kFusedThreads) vposed_one_kernel(
    const float* __restrict__ betas, const float* __restrict__ pose, bool is_matrix, const float* __restrict__ Jt,
    const float* __restrict__ Jd, Parents par, const float* __restrict__ vt, const float* __restrict__ sd,
    const float* __restrict__ pd, int V, int J, int S, float* __restrict__ v_posed, float* __restrict__ joints,
    float* __restrict__ A) {
  extern __shared__ __align__(16) float smem[];
  pdl_trigger();  // the Gaussian kernel's prologue reads inputs only
  if (fused_setup(betas, pose, is_matrix, Jt, Jd, par, J, S, smem, joints, A)) return;
  const FusedSmem L(J, S);
  const float *s_b = smem + L.b, *s_pf = smem + L.pf;
  const int P = (J - 1) * 9, lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int vblocks = gridDim.x > 1 ? gridDim.x - 1 : 1;
  for (int v = blockIdx.x * nw + warp; v < V; v += vblocks * nw) {
    float acc[1][3];
    if (VEC4 && S <= 4 * kWarp * kFusedS4 && P <= 2 * kWarp) {
      blend_vertex_one<kFusedS4>(sd, pd, s_b, s_pf, v, V, S, P, lane, acc[0]);
    } else {
      blend_shape<1, VEC4>(sd, s_b, v, S, lane, acc);
      add_pose_correctives<1>(pd, s_pf, v, V, P, lane, acc);
    }
    store_vposed(vt, v, lane, acc[0], v_posed);
  }
}

template <bool VEC4>
cudaError_t launch_vposed_one(const float* betas, const float* pose, bool is_matrix, const float* Jt,
                              const float* Jd, const Parents& par, const float* vt, const float* sd, const float* pd,
                              int V, int J, int S, float* v_posed, float* joints, float* A, int sms,
                              cudaStream_t stream) {
  auto kernel = vposed_one_kernel<VEC4>;
  const size_t smem = sizeof(float) * (size_t)FusedSmem(J, S).total;
  if (smem > 48 * 1024)
    FFA_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const int per_block = kFusedThreads / kWarp;
  const int blocks = std::min((V + per_block - 1) / per_block, kFusedBlocksPerSM * sms) + 1;  // + the joints block
  kernel<<<blocks, kFusedThreads, smem, stream>>>(betas, pose, is_matrix, Jt, Jd, par, vt, sd, pd, V, J, S, v_posed,
                                                  joints, A);
  return cudaGetLastError();
}

// ---- Hopper: shapedirs streamed into shared memory by bulk copies ----------------------------------
// vposed_one_kernel keeps ~2 vertices (10 KB) per warp in flight and ran at 2.3 TB/s on the H200
// (43% of DRAM peak) whatever its occupancy or load schedule. Here each vertex block owns a
// contiguous vertex range, one block per SM, and its first thread issues bulk copies of the whole
// range's shapedirs rows at kernel start (groups of kBulkGroup rows, one mbarrier each; a ring of
// `slots` group buffers when the range does not fit in shared memory). Warps wait for their group,
// blend from shared memory (dot_vertex: the same arithmetic as vposed_one_kernel, so v_posed is
// bitwise the same), and the posedirs loads are issued before the wait.
constexpr int kBulkGroup = kFusedThreads / kWarp;         // rows per copy: one vertex per warp
constexpr size_t kBulkSmemBudget = 200 * 1024;            // of the H200's 227 KB per block

struct BulkSmem {  // float offsets: FusedSmem, then `slots` mbarriers, then [slots][kBulkGroup][3S] rows
  int bars, buf, total;
  __host__ __device__ BulkSmem(int J, int S, int slots) {
    bars = (FusedSmem(J, S).total + 3) & ~3;
    buf = (bars + 2 * slots + 31) & ~31;
    total = buf + slots * kBulkGroup * 3 * S;
  }
};

__global__ void __launch_bounds__(kFusedThreads) vposed_bulk_kernel(
    const float* __restrict__ betas, const float* __restrict__ pose, bool is_matrix, const float* __restrict__ Jt,
    const float* __restrict__ Jd, Parents par, const float* __restrict__ vt, const float* __restrict__ sd,
    const float* __restrict__ pd, int V, int J, int S, int per_block, int slots, float* __restrict__ v_posed,
    float* __restrict__ joints, float* __restrict__ A) {
#ifdef FFA_HAS_BULK_COPY
  extern __shared__ __align__(16) float smem[];  // (the buffer offset is 128-byte aligned)
  const BulkSmem M(J, S, slots);
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + M.bars);
  float* buf = smem + M.buf;
  const int row = 3 * S, v0 = blockIdx.x * per_block;
  const int v1 = blockIdx.x < gridDim.x - 1 ? min(V, v0 + per_block) : v0;  // the last block: joints only
  const int groups = v1 > v0 ? (v1 - v0 + kBulkGroup - 1) / kBulkGroup : 0;
  auto issue = [&](int k) {  // group k -> slot k % slots
    const int first = v0 + k * kBulkGroup, n = min(kBulkGroup, v1 - first);
    bulk_load(buf + (size_t)(k % slots) * kBulkGroup * row, sd + (int64_t)first * row, (uint32_t)(n * row * 4),
              bars + k % slots);
  };
  if (threadIdx.x == 0 && groups > 0) {  // before anything else: the bytes are what this kernel waits on
    for (int i = 0; i < slots; ++i) mbar_init(bars + i, 1);
    mbar_init_fence();
    for (int k = 0; k < min(slots, groups); ++k) issue(k);
  }
  pdl_trigger();
  if (fused_setup(betas, pose, is_matrix, Jt, Jd, par, J, S, smem, joints, A)) return;  // (block barrier)
  const FusedSmem L(J, S);
  const float *s_b = smem + L.b, *s_pf = smem + L.pf;
  const int P = (J - 1) * 9, lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int k = 0; k < groups; ++k) {
    const int v = v0 + k * kBulkGroup + warp, slot = k % slots;
    if (v < v1) {
      float y[2][3], acc[3];
      load_pose_rows(pd, v, V, P, lane, y);
      mbar_wait(bars + slot, (k / slots) & 1);
      dot_vertex<kFusedS4, false>(reinterpret_cast<const float4*>(buf + ((size_t)slot * kBulkGroup + warp) * row), y,
                                  s_b, s_pf, S, P, lane, acc);
      store_vposed(vt, v, lane, acc, v_posed);
    }
    if (k + slots < groups) {  // refill the slot once every warp has read it
      __syncthreads();
      if (threadIdx.x == 0) {
        fence_proxy_async_smem();
        issue(k + slots);
      }
    }
  }
#endif
}

// The bulk kernel's launch shape, or slots == 0 when it does not apply (before sm_90, unaligned or
// non-float4 shapedirs, S > 512 or P > 64, no vertices, a group of rows beyond the budget).
struct BulkPlan {
  int blocks = 0, per_block = 0, slots = 0;
  size_t smem = 0;
};

BulkPlan plan_bulk(int V, int J, int S, bool vec4, int sms) {
  BulkPlan p;
  if (!vec4 || V == 0 || S > 4 * kWarp * kFusedS4 || (J - 1) * 9 > 2 * kWarp || sms < 2) return p;
  if (ffa_env_flag("FFAVATAR_NO_BULK") || !bulk_copy_supported()) return p;
  const size_t group_bytes = sizeof(float) * kBulkGroup * 3 * (size_t)S;
  const int vblocks = std::min(sms - 1, (V + kBulkGroup - 1) / kBulkGroup);  // one per SM; one SM for the joints
  p.per_block = (V + vblocks - 1) / vblocks;
  const int groups = (p.per_block + kBulkGroup - 1) / kBulkGroup;
  const size_t fixed = sizeof(float) * (size_t)BulkSmem(J, S, groups).buf;
  if (fixed + group_bytes > kBulkSmemBudget) return p;
  p.slots = std::min<int>(groups, (int)((kBulkSmemBudget - fixed) / group_bytes));
  p.smem = sizeof(float) * (size_t)BulkSmem(J, S, p.slots).total;
  p.blocks = (V + p.per_block - 1) / p.per_block + 1;  // + the joints block
  return p;
}

cudaError_t launch_vposed_bulk(const BulkPlan& p, const float* betas, const float* pose, bool is_matrix,
                               const float* Jt, const float* Jd, const Parents& par, const float* vt, const float* sd,
                               const float* pd, int V, int J, int S, float* v_posed, float* joints, float* A,
                               cudaStream_t stream) {
  FFA_RETURN_IF_CUDA_ERROR(
      cudaFuncSetAttribute(vposed_bulk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)p.smem));
  vposed_bulk_kernel<<<p.blocks, kFusedThreads, p.smem, stream>>>(betas, pose, is_matrix, Jt, Jd, par, vt, sd, pd, V,
                                                                  J, S, p.per_block, p.slots, v_posed, joints, A);
  return cudaGetLastError();
}

}  // namespace

template <typename I>
cudaError_t launch_skin_fused(const FusedArgs<I>& a, cudaStream_t stream) {
  if (a.J > kFusedMaxJoints) return cudaErrorInvalidValue;
  if (a.V > 0 || a.J > 0) {
    const bool vec4 = a.S % 4 == 0 && reinterpret_cast<uintptr_t>(a.shapedirs) % 16 == 0;
    int dev = 0, sms = 0;
    FFA_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev));
    FFA_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const BulkPlan plan = plan_bulk(a.V, a.J, a.S, vec4, sms);
    if (plan.slots > 0) {
      FFA_RETURN_IF_CUDA_ERROR(launch_vposed_bulk(plan, a.betas, a.pose, a.pose_is_matrix, a.J_template, a.J_dirs,
                                                  a.parents, a.v_template, a.shapedirs, a.posedirs, a.V, a.J, a.S,
                                                  a.v_posed, a.joints, a.A, stream));
    } else {
      auto launch = vec4 ? launch_vposed_one<true> : launch_vposed_one<false>;
      FFA_RETURN_IF_CUDA_ERROR(launch(a.betas, a.pose, a.pose_is_matrix, a.J_template, a.J_dirs, a.parents,
                                      a.v_template, a.shapedirs, a.posedirs, a.V, a.J, a.S, a.v_posed, a.joints, a.A,
                                      sms, stream));
    }
  }
  return launch_gaussians_fwd<I>(a.v_posed, a.A, a.W, a.wg, a.idx, a.aw, a.offsets, false, a.quats, a.means_only, 1,
                                 a.V, a.J, a.N, a.K, a.means, a.qout, /*pdl=*/true, stream);
}

template cudaError_t launch_skin_fused<int32_t>(const FusedArgs<int32_t>&, cudaStream_t);
template cudaError_t launch_skin_fused<int64_t>(const FusedArgs<int64_t>&, cudaStream_t);

}  // namespace lbs
}  // namespace ffa
