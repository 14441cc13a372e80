// CUDA backward of skin_gaussians (torch-free). One thread per (Gaussian, group of kBwdFrames
// frames); grid (ceil(N/256), ceil(B/kBwdFrames)), the same split as the forward.
//
// Per Gaussian, once per thread: anchors (KT, compile-time), joint weights wg (the cached row, or
// sum_k w_k W[i_k] in the forward's order, so M is bit-identical to the forward's), canonical
// quaternion. Per frame: M from the frame's A in shared memory, the anchored point (K float4 gathers
// of v_posed), the pose backward (lbs_math.h), scatter of w_k gp into grad_v_posed (one float4
// atomic per anchor on sm_90), and grad_A_j += wg_j gM reduced over
// the warp through shared memory: each lane stages gM [12] (wg [J] is staged once), then lane l sums
// output (j, e) = divmod(o, 12) for o = l, l+32, ... over the 32 staged rows and adds it into the
// block's grad_A accumulator (shared atomics), which goes to global memory once per block. That is
// ~3 instructions per (lane, output) instead of a 5-step shuffle butterfly per output with one lane
// doing all the atomics. Per-Gaussian gradients (offsets, quats, anchor weights) accumulate over the
// thread's frames in registers and are written directly when one frame group covers B, else added
// (zero-initialized outputs, see gaussians_bwd_accumulates).
#include "flame_lbs/flame_lbs.h"
#include "flame_lbs/lbs_device.cuh"

namespace ffa {
namespace lbs {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int kGMStride = 13;  // staged gM row (12 + 1 pad)
// 2 blocks/SM: 128 registers (sm_90, K=4, J<=8: 16 B of spills) instead of 149 at 1 block/SM

template <typename I, int KT, int JT>
__global__ void __launch_bounds__(kThreads, 2) gaussians_bwd_kernel(
    const float* __restrict__ gmeans, const float* __restrict__ gquats, const float* __restrict__ vposed,
    const float* __restrict__ A, const float* __restrict__ W, const float* __restrict__ wgp, const I* __restrict__ idx,
    const float* __restrict__ aw,
    const float* __restrict__ off, bool off_batched, const float* __restrict__ quats, bool means_only, int B, int V,
    int J, int N, float* __restrict__ g_vp, float* __restrict__ g_A, float* __restrict__ g_W,
    float* __restrict__ g_aw, float* __restrict__ g_off, float* __restrict__ g_q) {
  extern __shared__ __align__(16) float smem[];
  float* s_A = smem;                                   // [FB,J,16] A of this block's frames
  float* s_gA = s_A + kBwdFrames * J * 16;             // [FB,J,12] block accumulator of grad_A
  float* s_wg = s_gA + kBwdFrames * J * 12;            // [warps,32,J+1] staged joint weights
  float* s_gM = s_wg + kWarps * kWarp * (J + 1);       // [warps,32,13] staged gM of one frame
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int b0 = blockIdx.y * kBwdFrames, nb = min(kBwdFrames, B - b0);
  const bool accumulate = gridDim.y > 1;
  for (int e = threadIdx.x; e < nb * J * 16; e += kThreads) s_A[e] = A[(int64_t)b0 * J * 16 + e];
  for (int e = threadIdx.x; e < nb * J * 12; e += kThreads) s_gA[e] = 0.f;

  const int64_t n = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  const bool valid = n < N;
  I id[KT];
  float w[KT], wg[JT], gWu[JT], gaw[KT], qc[4], gqc[4] = {0.f, 0.f, 0.f, 0.f}, goff[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < KT; ++k) {
    id[k] = valid ? idx[n * KT + k] : I(0);
    w[k] = valid ? aw[n * KT + k] : 0.f;
    gaw[k] = 0.f;
  }
#pragma unroll
  for (int j = 0; j < JT; ++j) gWu[j] = 0.f;
  gaussian_joint_weights<KT, JT>(wgp ? wgp + n * J : nullptr, W, id, w, J, valid, wg);
  canonical_quat(valid && quats ? quats + n * 4 : nullptr, qc);
  float* my_wg = s_wg + (warp * kWarp + lane) * (J + 1);
#pragma unroll
  for (int j = 0; j < JT; ++j)
    if (j < J) my_wg[j] = wg[j];
  float* w_gM = s_gM + warp * kWarp * kGMStride;
  const float* w_wg = s_wg + warp * kWarp * (J + 1);
  __syncthreads();

  for (int bt = 0; bt < nb; ++bt) {
    const int64_t b = b0 + bt, i = b * N + n;
    const float* Ab = s_A + bt * J * 16;
    float gM[12];
#pragma unroll
    for (int e = 0; e < 12; ++e) gM[e] = 0.f;
    if (valid) {
      float M[12], p[3], gp[3], gm[3] = {0.f, 0.f, 0.f}, gq[4] = {0.f, 0.f, 0.f, 0.f};
      blend_wg_transform<JT>(wg, Ab, J, M);  // the forward's M
      const float* vpb = vposed + b * V * kVP;
      anchor_point4<KT>(id, w, vpb, off ? off + (off_batched ? i : n) * 3 : nullptr, p);
      if (gmeans) for (int c = 0; c < 3; ++c) gm[c] = gmeans[i * 3 + c];
      if (gquats) for (int c = 0; c < 4; ++c) gq[c] = gquats[i * 4 + c];
      gaussian_pose_backward(M, p, qc, means_only, gm, gq, gM, gp, gqc);
#pragma unroll
      for (int j = 0; j < JT; ++j) {
        if (j < J && (g_aw || g_W)) {  // <A_j, gM>: only for the lbs_weights / anchor_weights gradients
          float d = 0.f;
#pragma unroll
          for (int e = 0; e < 12; ++e) d += Ab[j * 16 + e] * gM[e];
          gWu[j] += d;
        }
      }
#pragma unroll
      for (int k = 0; k < KT; ++k) {
        if (g_aw) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(vpb) + id[k]);
          gaw[k] += v.x * gp[0] + v.y * gp[1] + v.z * gp[2];
        }
        atomic_add_row4(g_vp, (int64_t)b * V + id[k], w[k] * gp[0], w[k] * gp[1], w[k] * gp[2]);
      }
      if (g_off) {
        if (off_batched) for (int c = 0; c < 3; ++c) g_off[i * 3 + c] = gp[c];
        else for (int c = 0; c < 3; ++c) goff[c] += gp[c];
      }
    }
    // grad_A[b, j, e] += sum over the warp's Gaussians of wg_j gM_e (invalid lanes staged zeros)
#pragma unroll
    for (int e = 0; e < 12; ++e) w_gM[lane * kGMStride + e] = gM[e];
    __syncwarp();
    for (int o = lane; o < J * 12; o += kWarp) {
      const int j = o / 12, e = o - j * 12;
      float s = 0.f;
#pragma unroll 8
      for (int r = 0; r < kWarp; ++r) s += w_wg[r * (J + 1) + j] * w_gM[r * kGMStride + e];
      atomicAdd(s_gA + (bt * J + j) * 12 + e, s);
    }
    __syncwarp();
  }

  if (valid && (g_aw || g_W)) {
#pragma unroll
    for (int k = 0; k < KT; ++k) {
      const float* Wk = W + (int64_t)id[k] * J;
      float acc = gaw[k];
#pragma unroll
      for (int j = 0; j < JT; ++j) {
        if (j < J) {
          acc += __ldg(Wk + j) * gWu[j];
          if (g_W) atomicAdd(g_W + (int64_t)id[k] * J + j, w[k] * gWu[j]);
        }
      }
      if (g_aw) {
        if (accumulate) atomicAdd(g_aw + n * KT + k, acc);
        else g_aw[n * KT + k] = acc;
      }
    }
  }
  if (valid) {
    if (g_off && !off_batched) {
      for (int c = 0; c < 3; ++c) {
        if (accumulate) atomicAdd(g_off + n * 3 + c, goff[c]);
        else g_off[n * 3 + c] = goff[c];
      }
    }
    if (g_q) {
      float t[4];
      quat_normalize_backward(quats + n * 4, gqc, t);
      for (int c = 0; c < 4; ++c) {
        if (accumulate) atomicAdd(g_q + n * 4 + c, t[c]);
        else g_q[n * 4 + c] = t[c];
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < nb * J * 12; e += kThreads) {
    const int bj = e / 12, r = e - bj * 12;
    atomicAdd(g_A + ((int64_t)b0 * J + bj) * 16 + r, s_gA[e]);
  }
}

template <typename I, int KT>
cudaError_t launch_k(const float* gm, const float* gq, const float* v_posed, const float* A, const float* W,
                     const float* wg, const I* idx, const float* aw, const float* off, bool off_batched, const float* quats,
                     bool means_only, int B, int V, int J, int N, float* g_vp, float* g_A, float* g_W, float* g_aw,
                     float* g_off, float* g_q, cudaStream_t stream) {
  dim3 grid((N + kThreads - 1) / kThreads, (B + kBwdFrames - 1) / kBwdFrames);
  const size_t smem =
      sizeof(float) * ((size_t)kBwdFrames * J * 28 + (size_t)kWarps * kWarp * (J + 1 + kGMStride));
#define FFA_LBS_GBWD(JT)                                                                                         \
  do {                                                                                                           \
    auto kernel = gaussians_bwd_kernel<I, KT, JT>;                                                               \
    if (smem > 48 * 1024)                                                                                        \
      FFA_RETURN_IF_CUDA_ERROR(                                                                                  \
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));                 \
    kernel<<<grid, kThreads, smem, stream>>>(gm, gq, v_posed, A, W, wg, idx, aw, off, off_batched, quats, means_only, \
                                            B, V, J, N, g_vp, g_A, g_W, g_aw, g_off, g_q);                     \
  } while (0)
  if (J <= 8) FFA_LBS_GBWD(8);
  else if (J <= 32) FFA_LBS_GBWD(32);
  else FFA_LBS_GBWD(kMaxJoints);
#undef FFA_LBS_GBWD
  return cudaGetLastError();
}

}  // namespace

template <typename I>
cudaError_t launch_gaussians_bwd(const float* grad_means, const float* grad_q, const float* v_posed, const float* A,
                                 const float* W, const float* wg, const I* idx, const float* aw,
                                 const float* offsets, bool offsets_batched, const float* quats, bool means_only,
                                 int B, int V, int J, int N, int K, float* grad_vposed, float* grad_A, float* grad_W, float* grad_aw,
                                 float* grad_off, float* grad_quats, cudaStream_t stream) {
  if (B == 0 || N == 0) return cudaSuccess;
  if (J > kMaxJoints) return cudaErrorInvalidValue;
#define FFA_LBS_GBK(KT)                                                                                          \
  launch_k<I, KT>(grad_means, grad_q, v_posed, A, W, wg, idx, aw, offsets, offsets_batched, quats, means_only, B, V, J, \
                  N, grad_vposed, grad_A, grad_W, grad_aw, grad_off, grad_quats, stream)
  switch (K) {
    case 1: return FFA_LBS_GBK(1);
    case 2: return FFA_LBS_GBK(2);
    case 3: return FFA_LBS_GBK(3);
    case 4: return FFA_LBS_GBK(4);
    default: return cudaErrorInvalidValue;
  }
#undef FFA_LBS_GBK
}

template cudaError_t launch_gaussians_bwd<int32_t>(const float*, const float*, const float*, const float*,
                                                   const float*, const float*, const int32_t*, const float*, const float*, bool,
                                                   const float*, bool, int, int, int, int, int, float*, float*,
                                                   float*, float*, float*, float*, cudaStream_t);
template cudaError_t launch_gaussians_bwd<int64_t>(const float*, const float*, const float*, const float*,
                                                   const float*, const float*, const int64_t*, const float*, const float*, bool,
                                                   const float*, bool, int, int, int, int, int, float*, float*,
                                                   float*, float*, float*, float*, cudaStream_t);

}  // namespace lbs
}  // namespace ffa
