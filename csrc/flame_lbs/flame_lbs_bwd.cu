// CUDA backward kernels of flame_lbs_joints, flame_lbs and skin_gaussians (torch-free).
// Reductions over vertices / Gaussians: warp shuffles + shared memory, one atomic per block (or
// warp) and output element. Math: csrc/common/lbs_math.h.
#include "flame_lbs/flame_lbs.h"
#include "flame_lbs/lbs_device.cuh"

namespace ffa {
namespace lbs {
namespace {

constexpr int kTileV = 16;  // vertices per block in the vertex backward

__device__ __forceinline__ float half_warp_sum(float v) {  // over 16-lane groups
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void joints_bwd_kernel(const float* __restrict__ g_rot_in, const float* __restrict__ g_joints_in,
                                  const float* __restrict__ g_A_in, const float* __restrict__ betas,
                                  const float* __restrict__ pose, bool is_matrix, const float* __restrict__ Jt,
                                  const float* __restrict__ Jd, Parents par, int J, int S,
                                  float* __restrict__ g_betas, float* __restrict__ g_pose,
                                  float* __restrict__ g_rest) {
  __shared__ float s_rest[kMaxJoints * 3], s_rot[kMaxJoints * 9], s_G[kMaxJoints * 12], s_jo[kMaxJoints * 3];
  __shared__ float s_A[kMaxJoints * 16], s_gA[kMaxJoints * 16], s_gj[kMaxJoints * 3], s_gG[kMaxJoints * 12];
  __shared__ float s_grot[kMaxJoints * 9], s_grest[kMaxJoints * 3];
  const int b = blockIdx.x, lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const float* bb = betas + (int64_t)b * S;
  for (int o = warp; o < J * 3; o += nw) {
    float acc = 0.f;
    for (int s = lane; s < S; s += kWarp) acc += Jd[(int64_t)o * S + s] * bb[s];
    acc = warp_sum(acc);
    if (lane == 0) s_rest[o] = Jt[o] + acc;
  }
  for (int e = threadIdx.x; e < J * 16; e += blockDim.x) s_gA[e] = g_A_in ? g_A_in[(int64_t)b * J * 16 + e] : 0.f;
  for (int e = threadIdx.x; e < J * 3; e += blockDim.x) s_gj[e] = g_joints_in ? g_joints_in[(int64_t)b * J * 3 + e] : 0.f;
  for (int j = threadIdx.x; j < J; j += blockDim.x) {
    if (is_matrix) {
      for (int i = 0; i < 9; ++i) s_rot[j * 9 + i] = pose[((int64_t)b * J + j) * 9 + i];
    } else {
      rodrigues(pose + ((int64_t)b * J + j) * 3, s_rot + j * 9);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    chain_forward(J, par, s_rot, s_rest, s_G, s_jo, s_A);
    chain_backward(J, par, s_rot, s_rest, s_G, s_gA, s_gj, s_gG, s_grot, s_grest);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < J; j += blockDim.x) {
    float* gR = s_grot + j * 9;
    if (g_rot_in)
      for (int i = 0; i < 9; ++i) gR[i] += g_rot_in[((int64_t)b * J + j) * 9 + i];
    if (is_matrix) {
      for (int i = 0; i < 9; ++i) g_pose[((int64_t)b * J + j) * 9 + i] = gR[i];
    } else {
      rodrigues_backward(pose + ((int64_t)b * J + j) * 3, gR, g_pose + ((int64_t)b * J + j) * 3);
    }
  }
  for (int e = threadIdx.x; e < J * 3; e += blockDim.x) g_rest[(int64_t)b * J * 3 + e] = s_grest[e];
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    float acc = 0.f;
    for (int o = 0; o < J * 3; ++o) acc += Jd[(int64_t)o * S + s] * s_grest[o];
    g_betas[(int64_t)b * S + s] = acc;
  }
}

// One block per tile of kTileV vertices, BT frames per pass.
template <int BT>
__global__ void __launch_bounds__(256) vertices_bwd_kernel(
    const float* __restrict__ gout, const float* __restrict__ gvpx, const float* __restrict__ betas,
    const float* __restrict__ rot, const float* __restrict__ A, const float* __restrict__ sd,
    const float* __restrict__ pd, const float* __restrict__ W, const float* __restrict__ vposed, int B, int V, int J,
    int S, float* __restrict__ g_betas, float* __restrict__ g_rot, float* __restrict__ g_A, float* __restrict__ g_vt,
    float* __restrict__ g_sd, float* __restrict__ g_pd, float* __restrict__ g_W) {
  extern __shared__ float smem[];
  const int P = (J - 1) * 9;
  float* s_b = smem;                        // [BT,S]
  float* s_pf = s_b + BT * S;               // [BT,P]
  float* s_A = s_pf + BT * P;               // [BT,J,16]
  float* s_gvp = s_A + BT * J * 16;         // [kTileV,BT,3]
  float* s_gW = s_gvp + kTileV * BT * 3;    // [kTileV,J]
  float* s_gvt = s_gW + kTileV * J;         // [kTileV,3]
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int v0 = blockIdx.x * kTileV, nv = min(kTileV, V - v0);
  for (int e = threadIdx.x; e < kTileV * (J + 3); e += blockDim.x) s_gW[e] = 0.f;  // s_gW and s_gvt
  for (int b0 = 0; b0 < B; b0 += BT) {
    const int nb = min(BT, B - b0);
    fill_smem(s_b, BT * S, [&](int e) {
      const int bt = e / S;
      return bt < nb ? betas[(int64_t)(b0 + bt) * S + e % S] : 0.f;
    });
    fill_smem(s_pf, BT * P, [&](int e) {
      const int bt = e / P, p = e % P, k = p % 9;
      return bt < nb ? rot[(int64_t)(b0 + bt) * J * 9 + 9 + p] - ((k == 0 || k == 4 || k == 8) ? 1.f : 0.f) : 0.f;
    });
    fill_smem(s_A, BT * J * 16, [&](int e) { return e / (J * 16) < nb ? A[(int64_t)b0 * J * 16 + e] : 0.f; });
    __syncthreads();
    // phase 1: skinning backward per (frame, vertex); item = bt * kTileV + vl
    const int items = ((BT * kTileV + kWarp - 1) / kWarp) * kWarp;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
      const int bt = item / kTileV, vl = item % kTileV;
      const bool valid = bt < nb && vl < nv;
      float gM[12], gp[3] = {0.f, 0.f, 0.f};
      for (int i = 0; i < 12; ++i) gM[i] = 0.f;
      const int64_t v = v0 + vl, b = b0 + bt;
      if (valid) {
        float M[12], go[3] = {0.f, 0.f, 0.f};
        const int64_t o = (b * V + v) * 3, o4 = (b * V + v) * kVP;  // verts [B,V,3], v_posed [B,V,kVP]
        if (gout) for (int c = 0; c < 3; ++c) go[c] = gout[o + c];
        blend_transform(J, W + v * J, s_A + bt * J * 16, M);
        apply_transform_backward(M, vposed + o4, go, gM, gp);
        if (gvpx) for (int c = 0; c < 3; ++c) gp[c] += gvpx[o4 + c];
        for (int c = 0; c < 3; ++c) atomicAdd(s_gvt + vl * 3 + c, gp[c]);
        if (g_W) {
          for (int j = 0; j < J; ++j) {
            float d = 0.f;
            for (int i = 0; i < 12; ++i) d += s_A[(bt * J + j) * 16 + i] * gM[i];
            atomicAdd(s_gW + vl * J + j, d);
          }
        }
      }
      if (bt < BT && vl < kTileV)
        for (int c = 0; c < 3; ++c) s_gvp[(vl * BT + bt) * 3 + c] = valid ? gp[c] : 0.f;
      for (int j = 0; j < J; ++j) {
        const float wj = valid ? W[v * J + j] : 0.f;
        for (int i = 0; i < 12; ++i) {
          float t = half_warp_sum(wj * gM[i]);
          if (vl == 0 && bt < nb) atomicAdd(g_A + (b * J + j) * 16 + i, t);
        }
      }
    }
    __syncthreads();
    // phase 2: shapedirs (g_betas reduction over the tile, g_shapedirs)
    for (int s = threadIdx.x; s < S; s += blockDim.x) {
      float acc[BT], bet[BT];
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) { acc[bt] = 0.f; bet[bt] = s_b[bt * S + s]; }
      // the tile's kTileV*3 shapedirs values of column s: loaded 4 vertices at a time (12 loads in
      // flight instead of one latency per value)
#pragma unroll 4
      for (int vl = 0; vl < kTileV; ++vl) {
        if (vl >= nv) break;
#pragma unroll
        for (int c = 0; c < 3; ++c) {
          const int64_t e = ((int64_t)(v0 + vl) * 3 + c) * S + s;
          const float x = __ldg(sd + e);
          float gs = 0.f;
#pragma unroll
          for (int bt = 0; bt < BT; ++bt) {
            const float g = s_gvp[(vl * BT + bt) * 3 + c];
            acc[bt] += x * g;
            gs += g * bet[bt];
          }
          if (g_sd) g_sd[e] = b0 == 0 ? gs : g_sd[e] + gs;
        }
      }
#pragma unroll
      for (int bt = 0; bt < BT; ++bt)
        if (bt < nb) atomicAdd(g_betas + (int64_t)(b0 + bt) * S + s, acc[bt]);
    }
    // phase 3: posedirs (pose-feature gradient -> g_rot, g_posedirs)
    for (int p = warp; p < P; p += nw) {
      float acc[BT];
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) acc[bt] = 0.f;
      for (int e = lane; e < nv * 3; e += kWarp) {
        const int vl = e / 3, c = e % 3;
        const int64_t pe = (int64_t)p * V * 3 + (int64_t)v0 * 3 + e;
        const float x = __ldg(pd + pe);
        float gs = 0.f;
#pragma unroll
        for (int bt = 0; bt < BT; ++bt) {
          const float g = s_gvp[(vl * BT + bt) * 3 + c];
          acc[bt] += x * g;
          gs += s_pf[bt * P + p] * g;
        }
        if (g_pd) g_pd[pe] = b0 == 0 ? gs : g_pd[pe] + gs;
      }
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        float t = warp_sum(acc[bt]);
        if (lane == 0 && bt < nb) atomicAdd(g_rot + (int64_t)(b0 + bt) * J * 9 + 9 + p, t);
      }
    }
    __syncthreads();
  }
  for (int e = threadIdx.x; e < nv * J; e += blockDim.x)
    if (g_W) g_W[(int64_t)v0 * J + e] = s_gW[e];
  for (int e = threadIdx.x; e < nv * 3; e += blockDim.x)
    if (g_vt) g_vt[(int64_t)v0 * 3 + e] = s_gvt[e];
}

template <int BT>
cudaError_t launch_vertices_bwd_bt(const float* gout, const float* gvpx, const float* betas, const float* rot,
                                   const float* A, const float* sd, const float* pd, const float* W,
                                   const float* vposed, int B, int V, int J, int S, float* g_betas, float* g_rot,
                                   float* g_A, float* g_vt, float* g_sd, float* g_pd, float* g_W,
                                   cudaStream_t stream) {
  size_t smem = sizeof(float) * ((size_t)BT * (S + (J - 1) * 9 + J * 16) + kTileV * BT * 3 + kTileV * (J + 3));
  if (smem > 48 * 1024)
    FFA_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(vertices_bwd_kernel<BT>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const int blocks = (V + kTileV - 1) / kTileV;
  vertices_bwd_kernel<BT><<<blocks, 256, smem, stream>>>(gout, gvpx, betas, rot, A, sd, pd, W, vposed, B, V, J, S,
                                                         g_betas, g_rot, g_A, g_vt, g_sd, g_pd, g_W);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_joints_bwd(const float* grad_rot, const float* grad_joints, const float* grad_A,
                              const float* betas, const float* pose, bool pose_is_matrix, const float* J_template,
                              const float* J_dirs, const Parents& par, int B, int J, int S, float* grad_betas,
                              float* grad_pose, float* grad_rest, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  joints_bwd_kernel<<<B, 128, 0, stream>>>(grad_rot, grad_joints, grad_A, betas, pose, pose_is_matrix, J_template,
                                           J_dirs, par, J, S, grad_betas, grad_pose, grad_rest);
  return cudaGetLastError();
}

cudaError_t launch_vertices_bwd(const float* grad_verts, const float* grad_vposed, const float* betas,
                                const float* rot, const float* A, const float* shapedirs, const float* posedirs,
                                const float* W, const float* v_posed, int B, int V, int J, int S,
                                float* grad_betas, float* grad_rot, float* grad_A, float* grad_vt,
                                float* grad_sd, float* grad_pd, float* grad_W, cudaStream_t stream) {
  if (B == 0 || V == 0) return cudaSuccess;
#define FFA_LBS_VBWD(BT)                                                                                       \
  launch_vertices_bwd_bt<BT>(grad_verts, grad_vposed, betas, rot, A, shapedirs, posedirs, W, v_posed, B, V, J, S, \
                             grad_betas, grad_rot, grad_A, grad_vt, grad_sd, grad_pd, grad_W, stream)
  if (B <= 1) return FFA_LBS_VBWD(1);
  if (B <= 2) return FFA_LBS_VBWD(2);
  if (B <= 4) return FFA_LBS_VBWD(4);
  if (B <= 8) return FFA_LBS_VBWD(8);
  return FFA_LBS_VBWD(16);
#undef FFA_LBS_VBWD
}

}  // namespace lbs
}  // namespace ffa
