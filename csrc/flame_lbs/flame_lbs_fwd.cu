// CUDA forward kernels of flame_lbs_joints, flame_lbs and skin_gaussians (torch-free).
// Launch plan per call: (1) joints: one block per frame; (2) vertices: one warp per vertex, all
// frames of a chunk of <= 16 at once so shapedirs is read once for B <= 16; (3) Gaussians: one thread
// per (Gaussian, frame), fused with the gather of its anchors. Math: csrc/common/lbs_math.h.
// (2) and (3) are programmatic dependent launches (common/pdl.cuh, sm_90): the vertex kernel blends
// shapedirs while the joints kernel still runs and waits only before it reads rot / A; the Gaussian
// kernel gathers its anchors' joint weights while the vertex kernel finishes.
#include "common/pdl.cuh"
#include "flame_lbs/flame_lbs.h"
#include "flame_lbs/lbs_device.cuh"

namespace ffa {
namespace lbs {
namespace {

__global__ void joints_fwd_kernel(const float* __restrict__ betas, const float* __restrict__ pose, bool is_matrix,
                                  const float* __restrict__ Jt, const float* __restrict__ Jd, Parents par, int J,
                                  int S, float* __restrict__ rot, float* __restrict__ joints, float* __restrict__ A) {
  __shared__ float s_rest[kMaxJoints * 3], s_rot[kMaxJoints * 9], s_G[kMaxJoints * 12];
  pdl_trigger();  // the vertex kernel's shape blend does not read our outputs
  const int b = blockIdx.x, lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const float* bb = betas + (int64_t)b * S;
  for (int o = warp; o < J * 3; o += nw) {
    float acc = 0.f;
#pragma unroll 8
    for (int s = lane; s < S; s += kWarp) acc += Jd[(int64_t)o * S + s] * bb[s];
    acc = warp_sum(acc);
    if (lane == 0) s_rest[o] = Jt[o] + acc;
  }
  for (int j = threadIdx.x; j < J; j += blockDim.x) {
    float* R = s_rot + j * 9;
    if (is_matrix) {
      for (int i = 0; i < 9; ++i) R[i] = pose[((int64_t)b * J + j) * 9 + i];
    } else {
      rodrigues(pose + ((int64_t)b * J + j) * 3, R);
    }
    for (int i = 0; i < 9; ++i) rot[((int64_t)b * J + j) * 9 + i] = R[i];
  }
  __syncthreads();
  if (threadIdx.x == 0) chain_forward(J, par, s_rot, s_rest, s_G, joints + (int64_t)b * J * 3, A + (int64_t)b * J * 16);
}

// Sums acc[bt][c] over the warp, BT frames x 3 at once: a transposed reduce-scatter (each xor round
// hands half of the remaining frames to the partner lane: 3*(BT/2 + BT/4 + ... + 1) shuffles, then
// plain xor rounds) instead of 3*BT 5-step butterflies (BT=16: 48 shuffles instead of 240). Returns
// the frame whose sums `out` this lane holds, or -1 on the lanes that hold a duplicate.
template <int BT>
__device__ __forceinline__ int reduce_scatter_frames(float (&acc)[BT][3], int lane, float (&out)[3]) {
  constexpr int R = BT >= 16 ? 4 : BT >= 8 ? 3 : BT >= 4 ? 2 : BT >= 2 ? 1 : 0;
  static_assert(BT == (1 << R), "BT must be a power of two <= 16");
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int off = 16 >> r, h = BT >> (r + 1);
    const bool upper = (lane & off) != 0;
#pragma unroll
    for (int k = 0; k < h; ++k)
#pragma unroll
      for (int c = 0; c < 3; ++c) {
        const float send = upper ? acc[k][c] : acc[k + h][c];
        const float keep = upper ? acc[k + h][c] : acc[k][c];
        acc[k][c] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
  }
#pragma unroll
  for (int off = 16 >> R; off > 0; off >>= 1)
#pragma unroll
    for (int c = 0; c < 3; ++c) acc[0][c] += __shfl_xor_sync(0xffffffffu, acc[0][c], off);
#pragma unroll
  for (int c = 0; c < 3; ++c) out[c] = acc[0][c];
  const int dup = (1 << (5 - R)) - 1;  // lanes sharing a frame: only the first one reports it
  return (lane & dup) == 0 ? lane >> (5 - R) : -1;
}

// BT = 16: per-warp scratch for the reduction of the 3*BT partial sums, [3*BT][kRedPitch] floats.
constexpr int kRedPitch = kWarp + 1;  // pitch 33: the column reads below hit 32 different banks
template <int BT>
constexpr int red_floats_per_warp() {
  return BT >= 16 ? 3 * BT * kRedPitch : 0;
}

// Pose correctives, warp reduction, skinning and stores of vertex v (frame b0+f by the lane that
// holds frame f's sums, f < nb). s_A: [BT,J,16] in the kernel's shared memory, the reduction scratch
// after it (BT = 16 only).
template <int BT>
__device__ __forceinline__ void finish_vertex(float (&acc)[BT][3], const float* s_pf, const float* s_A,
                                              const float* __restrict__ vt, const float* __restrict__ pd,
                                              const float* __restrict__ W, int v, int b0, int nb, int V, int J,
                                              int lane, float* __restrict__ verts, float* __restrict__ v_posed) {
  add_pose_correctives<BT>(pd, s_pf, v, V, (J - 1) * 9, lane, acc);
  float mine[3] = {0.f, 0.f, 0.f};
  int f = -1;
  if (BT <= 8) {
    f = reduce_scatter_frames<BT>(acc, lane, mine);
  } else {
    // BT = 16: a transpose through shared memory (each lane stores its 48 partial sums, then sums
    // one of the 48 columns over the 32 lanes: ~180 instructions per lane instead of the ~530 of 48
    // five-step butterflies, and fewer live registers than the reduce-scatter, which spilled here)
    constexpr int O = 3 * BT;
    float* s_red = const_cast<float*>(s_A) + BT * J * 16 + (threadIdx.x / kWarp) * red_floats_per_warp<BT>();
#pragma unroll
    for (int bt = 0; bt < BT; ++bt)
#pragma unroll
      for (int c = 0; c < 3; ++c) s_red[(bt * 3 + c) * kRedPitch + lane] = acc[bt][c];
    __syncwarp();
    float r0 = 0.f, r1 = 0.f;  // columns o = lane and o = lane + 32 (lane < O - 32)
#pragma unroll 8
    for (int k = 0; k < kWarp; ++k) r0 += s_red[lane * kRedPitch + k];
    if (lane + kWarp < O)
#pragma unroll 8
      for (int k = 0; k < kWarp; ++k) r1 += s_red[(lane + kWarp) * kRedPitch + k];
    __syncwarp();
    s_red[lane] = r0;
    if (lane + kWarp < O) s_red[lane + kWarp] = r1;
    __syncwarp();
    if (lane < BT)
#pragma unroll
      for (int c = 0; c < 3; ++c) mine[c] = s_red[lane * 3 + c];
    __syncwarp();  // the next vertex overwrites the scratch
    f = lane < BT ? lane : -1;
  }
  if (f >= 0 && f < nb) {
    const int64_t r = (int64_t)(b0 + f) * V + v;
    float p[3], M[12], out[3];
    for (int c = 0; c < 3; ++c) p[c] = vt[(int64_t)v * 3 + c] + mine[c];
    blend_transform(J, W + (int64_t)v * J, s_A + f * J * 16, M);
    apply_transform(M, p, out);
    reinterpret_cast<float4*>(v_posed)[r] = make_float4(p[0], p[1], p[2], 0.f);  // [B,V,kVP]
    for (int c = 0; c < 3; ++c) verts[r * 3 + c] = out[c];
  }
}

// One warp per vertex (grid-stride over vertices, resident blocks only); BT frames per pass (betas,
// pose features, transforms of those frames in smem). For BT <= 4 the first vertex of every warp
// is blended before the block waits for the joints kernel (PDL) and loads rot / A.
template <int BT, bool VEC4>
__global__ void __launch_bounds__(256, BT >= 4 ? 2 : BT >= 2 ? 4 : 5) vertices_fwd_kernel(
    const float* __restrict__ betas, const float* __restrict__ rot, const float* __restrict__ A,
    const float* __restrict__ vt, const float* __restrict__ sd, const float* __restrict__ pd,
    const float* __restrict__ W, int B, int V, int J, int S, float* __restrict__ verts, float* __restrict__ v_posed) {
  extern __shared__ float smem[];
  pdl_trigger();  // the Gaussian kernel's prologue does not read our outputs
  const int P = (J - 1) * 9;
  float* s_b = smem;             // [BT,S]
  float* s_pf = s_b + BT * S;    // [BT,P]
  float* s_A = s_pf + BT * P;    // [BT,J,16]
  // then (BT = 16) the reduction scratch, [nw][3*BT][kRedPitch] (finish_vertex)
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int stride = gridDim.x * nw;
  for (int b0 = 0; b0 < B; b0 += BT) {
    const int nb = min(BT, B - b0);
    // 8 independent loads in flight per thread (one latency per 8 elements instead of one each)
    fill_smem(s_b, BT * S, [&](int e) {
      const int bt = e / S;
      return bt < nb ? betas[(int64_t)(b0 + bt) * S + e % S] : 0.f;
    });
    // kPeel: the first vertex is blended before the wait (its 3*BT partial sums stay in registers
    // across the smem fills: worth it for small BT; at BT >= 8 it costs registers / spills)
    constexpr bool kPeel = BT <= 4;
    int v = blockIdx.x * nw + warp;
    float acc[BT][3];
    if (kPeel) {
      __syncthreads();
      if (v < V) blend_shape<BT, VEC4>(sd, s_b, v, S, lane, acc);
    }
    pdl_wait();  // rot and A are the joints kernel's outputs
    fill_smem(s_pf, BT * P, [&](int e) {
      const int bt = e / P, p = e % P, k = p % 9;
      return bt < nb ? rot[(int64_t)(b0 + bt) * J * 9 + 9 + p] - ((k == 0 || k == 4 || k == 8) ? 1.f : 0.f) : 0.f;
    });
    fill_smem(s_A, BT * J * 16, [&](int e) { return e / (J * 16) < nb ? A[(int64_t)b0 * J * 16 + e] : 0.f; });
    __syncthreads();
    if (kPeel) {
      if (v < V) finish_vertex<BT>(acc, s_pf, s_A, vt, pd, W, v, b0, nb, V, J, lane, verts, v_posed);
      v += stride;
    }
    for (; v < V; v += stride) {
      blend_shape<BT, VEC4>(sd, s_b, v, S, lane, acc);
      finish_vertex<BT>(acc, s_pf, s_A, vt, pd, W, v, b0, nb, V, J, lane, verts, v_posed);
    }
    __syncthreads();
  }
}

template <int BT>
cudaError_t launch_vertices_bt(const float* betas, const float* rot, const float* A, const float* vt, const float* sd,
                               const float* pd, const float* W, int B, int V, int J, int S, float* verts,
                               float* v_posed, bool pdl, cudaStream_t stream) {
  const int threads = 256, per_block = threads / kWarp;
  size_t smem = sizeof(float) * ((size_t)BT * (S + (J - 1) * 9 + J * 16) + (size_t)per_block * red_floats_per_warp<BT>());
  const bool vec4 = S % 4 == 0 && reinterpret_cast<uintptr_t>(sd) % 16 == 0;
  auto kernel = vec4 ? vertices_fwd_kernel<BT, true> : vertices_fwd_kernel<BT, false>;
  if (smem > 48 * 1024)
    FFA_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  int blocks = (V + per_block - 1) / per_block;
  // Resident blocks only (grid-stride over vertices): the smem preload of a chunk (BT*S betas etc.)
  // is paid once per resident block instead of once per 8 vertices.
  int dev = 0, sms = 0, occ = 0;
  FFA_RETURN_IF_CUDA_ERROR(cudaGetDevice(&dev));
  FFA_RETURN_IF_CUDA_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  FFA_RETURN_IF_CUDA_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, threads, smem));
  const int resident = sms * (occ > 0 ? occ : 1);
  if (blocks > resident) blocks = resident;
  return launch_pdl(pdl, kernel, dim3(blocks), dim3(threads), smem, stream, betas, rot, A, vt, sd, pd, W, B, V, J, S, verts,
                    v_posed);
}

// One thread per (Gaussian, group of kGaussFrames frames); grid (ceil(N/256), ceil(B/kGaussFrames)).
// Per Gaussian, once for its frames: anchors (KT, compile-time), joint weights wg [J] (one
// coalesced row of the cached joint_weights, or the K*J gathers of lbs_weights), canonical
// quaternion, unbatched offset. Per frame: M = sum_j wg_j A_j (A of the block's frames in smem,
// broadcast reads), the anchored point (K float4 gathers of v_posed, issued one frame ahead so a
// thread waits for one gather round trip, not one per frame), Shepperd, stores (lanes = consecutive
// Gaussians: coalesced; quats as float4). JT: joint count bound (registers).
constexpr int kGaussFrames = 4;

template <typename I, int KT, int JT>
__global__ void __launch_bounds__(256, 3) gaussians_fwd_kernel(const float* __restrict__ v_posed, const float* __restrict__ A,
                                     const float* __restrict__ W, const float* __restrict__ wgp,
                                     const I* __restrict__ idx,
                                     const float* __restrict__ aw, const float* __restrict__ off, bool off_batched,
                                     const float* __restrict__ quats, bool means_only, int B, int V, int J, int N,
                                     float* __restrict__ means, float* __restrict__ qout) {
  __shared__ float s_A[kGaussFrames * JT * 16];  // [nb,J,16] A of this block's frames
  const int b0 = blockIdx.y * kGaussFrames, nb = min(kGaussFrames, B - b0);
  const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const bool valid = n < N;
  // Prologue (inputs only; overlaps the vertex kernel under PDL): anchors, joint weights, quat, offset.
  I id[KT];
  float w[KT], wg[JT], qc[4], o[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < KT; ++k) {
    id[k] = valid ? idx[n * KT + k] : I(0);
    w[k] = valid ? aw[n * KT + k] : 0.f;
  }
  gaussian_joint_weights<KT, JT>(wgp ? wgp + n * J : nullptr, W, id, w, J, valid, wg);
  canonical_quat(valid && quats ? quats + n * 4 : nullptr, qc);
  if (valid && off && !off_batched)
    for (int c = 0; c < 3; ++c) o[c] = off[n * 3 + c];
  pdl_wait();  // v_posed (vertex kernel) and A (joints kernel, finished before it)
  fill_smem(s_A, nb * J * 16, [&](int e) { return A[(int64_t)b0 * J * 16 + e]; });
  __syncthreads();
  if (!valid) return;
  float4 g[KT];
  gather_anchors4<KT>(id, v_posed + (int64_t)b0 * V * kVP, g);
#pragma unroll
  for (int bt = 0; bt < kGaussFrames; ++bt) {
    if (bt >= nb) break;
    const int64_t b = b0 + bt, i = b * N + n;
    if (off && off_batched)  // per-frame offsets (rare): loaded here, not ahead (registers)
      for (int c = 0; c < 3; ++c) o[c] = off[i * 3 + c];
    float4 gn[KT];
    const bool ahead = bt + 1 < nb;
    if (ahead) gather_anchors4<KT>(id, v_posed + (b + 1) * V * kVP, gn);
    gaussian_frame_fwd<KT, JT>(g, w, wg, qc, o, s_A + bt * J * 16, J, means_only, means + i * 3, qout + i * 4);
    if (ahead)
#pragma unroll
      for (int k = 0; k < KT; ++k) g[k] = gn[k];
  }
}

template <typename I, int KT>
cudaError_t launch_gaussians_k(const float* v_posed, const float* A, const float* W, const float* wg, const I* idx,
                               const float* aw,
                               const float* offsets, bool offsets_batched, const float* quats, bool means_only,
                               int B, int V, int J, int N, float* means, float* qout, bool pdl, cudaStream_t stream) {
  const int threads = 256;
  cudaError_t err;
  dim3 grid((N + threads - 1) / threads, (B + kGaussFrames - 1) / kGaussFrames);
#define FFA_LBS_GFWD(JT)                                                                                       \
  err = launch_pdl(pdl, gaussians_fwd_kernel<I, KT, JT>, grid, dim3(threads), 0, stream, v_posed, A, W, wg, idx, aw, \
                   offsets, offsets_batched, quats, means_only, B, V, J, N, means, qout)
  if (J <= 5) FFA_LBS_GFWD(5);  // FLAME
  else if (J <= 8) FFA_LBS_GFWD(8);
  else if (J <= 32) FFA_LBS_GFWD(32);
  else FFA_LBS_GFWD(kMaxJoints);
#undef FFA_LBS_GFWD
  return err;
}

}  // namespace

cudaError_t launch_joints_fwd(const float* betas, const float* pose, bool pose_is_matrix, const float* J_template,
                              const float* J_dirs, const Parents& par, int B, int J, int S, float* rot,
                              float* joints, float* A, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  // one warp per rest-joint coordinate (J*3 dot products over S), up to 512 threads
  const int threads = J * 3 * kWarp < 128 ? 128 : (J * 3 * kWarp > 512 ? 512 : J * 3 * kWarp);
  joints_fwd_kernel<<<B, threads, 0, stream>>>(betas, pose, pose_is_matrix, J_template, J_dirs, par, J, S, rot, joints, A);
  return cudaGetLastError();
}

cudaError_t launch_vertices_fwd(const float* betas, const float* rot, const float* A, const float* v_template,
                                const float* shapedirs, const float* posedirs, const float* W, int B, int V,
                                int J, int S, float* verts, float* v_posed, bool pdl, cudaStream_t stream) {
  if (B == 0 || V == 0) return cudaSuccess;
#define FFA_LBS_VERT(BT) \
  launch_vertices_bt<BT>(betas, rot, A, v_template, shapedirs, posedirs, W, B, V, J, S, verts, v_posed, pdl, stream)
  if (B <= 1) return FFA_LBS_VERT(1);
  if (B <= 2) return FFA_LBS_VERT(2);
  if (B <= 4) return FFA_LBS_VERT(4);
  if (B <= 8) return FFA_LBS_VERT(8);
  return FFA_LBS_VERT(16);
#undef FFA_LBS_VERT
}

template <typename I>
cudaError_t launch_gaussians_fwd(const float* v_posed, const float* A, const float* W, const float* wg, const I* idx,
                                 const float* aw, const float* offsets, bool offsets_batched, const float* quats, bool means_only,
                                 int B, int V, int J, int N, int K, float* means, float* qout, bool pdl,
                                 cudaStream_t stream) {
  if (B == 0 || N == 0) return cudaSuccess;
  if (J > kMaxJoints) return cudaErrorInvalidValue;
#define FFA_LBS_GK(KT) \
  launch_gaussians_k<I, KT>(v_posed, A, W, wg, idx, aw, offsets, offsets_batched, quats, means_only, B, V, J, N, means, qout, \
                            pdl, stream)
  switch (K) {
    case 1: return FFA_LBS_GK(1);
    case 2: return FFA_LBS_GK(2);
    case 3: return FFA_LBS_GK(3);
    case 4: return FFA_LBS_GK(4);
    default: return cudaErrorInvalidValue;
  }
#undef FFA_LBS_GK
}

template cudaError_t launch_gaussians_fwd<int32_t>(const float*, const float*, const float*, const float*, const int32_t*,
                                                   const float*, const float*, bool, const float*, bool, int, int,
                                                   int, int, int, float*, float*, bool, cudaStream_t);
template cudaError_t launch_gaussians_fwd<int64_t>(const float*, const float*, const float*, const float*, const int64_t*,
                                                   const float*, const float*, bool, const float*, bool, int, int,
                                                   int, int, int, float*, float*, bool, cudaStream_t);

}  // namespace lbs
}  // namespace ffa
