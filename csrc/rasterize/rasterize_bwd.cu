// CUDA backward blending: one block per (image, tile), splats visited back to front in shared-memory
// batches (only up to the block's largest last_id); each thread recovers its transmittance by
// division (as gsplat), the per-splat gradients of the 32 pixels of a warp are summed with shuffles,
// and one lane per warp adds them to the per-(image, Gaussian) buffers with atomics. Channels are
// handled CH at a time (all gradients are linear in the channel terms, so chunks simply add up).
// Warp culling as in the forward (rasterize_warp.cuh): per 32 splats of a batch each lane tests one
// against the warp's pixel rectangle, and only the ballot hits up to the warp's largest last id are
// evaluated, reduced and added.
#include "common/splat_math.h"
#include "rasterize/rasterize.h"
#include "rasterize/rasterize_warp.cuh"

namespace ffa {
namespace rasterize {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

template <int CH>
__global__ void render_bwd_kernel(const float2* __restrict__ means2d, const float* __restrict__ conics,
                                  const float* __restrict__ opac2d, const float* __restrict__ colors,
                                  const float* __restrict__ backgrounds, const int32_t* __restrict__ tile_offsets,
                                  const int32_t* __restrict__ flatten_ids, int32_t n_isects, Dims d, int chan0,
                                  int nch, const float* __restrict__ final_Ts, const int32_t* __restrict__ last_ids,
                                  const float* __restrict__ v_out_c, const float* __restrict__ v_out_a,
                                  float* __restrict__ v_means2d, float* __restrict__ v_conics,
                                  float* __restrict__ v_opac2d, float* __restrict__ v_colors) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int nt = blockDim.x;
  int32_t* s_id = reinterpret_cast<int32_t*>(smem);
  float4* s_xyo = reinterpret_cast<float4*>(s_id + nt);  // x, y, opacity, sigma cutoff
  float3* s_con = reinterpret_cast<float3*>(s_xyo + nt);
  float* s_col = reinterpret_cast<float*>(s_con + nt);  // [nt, CH]
  __shared__ int s_maxlast;

  const int tx = blockIdx.x, ty = blockIdx.y;
  const int64_t m = blockIdx.z;
  const int tid = threadIdx.x, ts = d.tile_size, lane = tid & 31;
  int li, lj;
  tile_pixel(tid, ts, li, lj);
  const int i = ty * ts + li, j = tx * ts + lj;
  const bool inside = li < ts && i < d.H && j < d.W;
  const int64_t tiles = (int64_t)d.tiles_x * d.tiles_y;
  const int64_t gt = m * tiles + (int64_t)ty * d.tiles_x + tx;
  const int32_t start = tile_offsets[gt];
  const int32_t end = gt + 1 < d.B * d.C * tiles ? tile_offsets[gt + 1] : n_isects;
  const int64_t cam = m % d.C, b = m / d.C;
  const int64_t color_base = (b * d.Cc + (d.Cc == 1 ? 0 : cam)) * d.N;
  const int64_t img_base = m * d.N;
  const int64_t pix = (m * d.H + i) * (int64_t)d.W + j;

  const int32_t last = inside ? last_ids[pix] : -1;
  if (tid == 0) s_maxlast = -1;
  __syncthreads();
  if (last >= 0) atomicMax(&s_maxlast, last);
  __syncthreads();
  const int32_t range_end = min(end, s_maxlast + 1);  // exclusive
  if (range_end <= start) return;           // uniform across the block
  const int32_t wlast = __reduce_max_sync(kFullMask, last);  // -1: nothing to do for this warp
  const WarpRect rect = warp_rect(inside, i, j);

  const float px = (float)j + 0.5f, py = (float)i + 0.5f;
  const float T_final = inside ? final_Ts[pix] : 1.f;
  float T = T_final;
  float vrc[CH], buf[CH];
  float bg_dot = 0.f;
#pragma unroll
  for (int q = 0; q < CH; ++q) {
    vrc[q] = (inside && q < nch) ? v_out_c[pix * d.D + chan0 + q] : 0.f;
    buf[q] = 0.f;
    if (backgrounds && q < nch) bg_dot += backgrounds[m * d.D + chan0 + q] * vrc[q];
  }
  const float vra = (inside && chan0 == 0) ? v_out_a[pix] : 0.f;

  for (int32_t be = range_end; be > start; be -= nt) {
    const int32_t bstart = max(start, be - nt);
    __syncthreads();  // previous batch consumed
    int32_t k = be - 1 - tid;
    if (k >= bstart) {
      int32_t g = flatten_ids[k];
      s_id[tid] = g;
      float2 mm = means2d[g];
      const float op = opac2d[g];
      s_xyo[tid] = make_float4(mm.x, mm.y, op, splat::sigma_cutoff<float>(op));
      s_con[tid] = make_float3(conics[3 * (int64_t)g], conics[3 * (int64_t)g + 1], conics[3 * (int64_t)g + 2]);
      const float* c = colors + (color_base + (g - img_base)) * d.D + chan0;
#pragma unroll
      for (int q = 0; q < CH; ++q) s_col[tid * CH + q] = q < nch ? c[q] : 0.f;
    }
    __syncthreads();
    const int cnt = be - bstart;
    // item t holds k = be-1-t (back to front); only k <= wlast matter for this warp
    for (int c0 = max(0, be - 1 - wlast); c0 < cnt; c0 += 32) {
      const int tl = c0 + lane;
      const bool hit = tl < cnt && warp_may_hit(s_xyo[tl], s_con[tl], rect);
      unsigned mask = __ballot_sync(kFullMask, hit);
      while (mask != 0u) {  // warp-uniform; set bits in order: back to front
        const int t = c0 + __ffs(mask) - 1;
        mask &= mask - 1u;
        const int32_t kk = be - 1 - t;
        float4 xyo = s_xyo[t];
        float3 con = s_con[t];
        float alpha = 0.f, vis = 0.f, dx = 0.f, dy = 0.f;
        bool valid = inside && kk <= last &&
                     !splat::splat_far<float>(xyo.x, xyo.y, con.x, con.y, con.z, xyo.w, px, py) &&
                     splat::splat_alpha<float>(xyo.x, xyo.y, con.x, con.y, con.z, xyo.z, px, py, alpha, vis, dx, dy);
        if (!__any_sync(0xffffffffu, valid)) continue;
        float g_xy0 = 0.f, g_xy1 = 0.f, g_c0 = 0.f, g_c1 = 0.f, g_c2 = 0.f, g_op = 0.f;
        float g_col[CH];
#pragma unroll
        for (int q = 0; q < CH; ++q) g_col[q] = 0.f;
        if (valid) {
          const float ra = 1.f / (1.f - alpha);
          T *= ra;
          const float fac = alpha * T;
          float v_alpha = 0.f;
#pragma unroll
          for (int q = 0; q < CH; ++q) {
            const float cq = s_col[t * CH + q];
            g_col[q] = fac * vrc[q];
            v_alpha += (cq * T - buf[q] * ra) * vrc[q];
            buf[q] += cq * fac;
          }
          v_alpha += T_final * ra * (vra - bg_dot);
          if (xyo.z * vis <= splat::kMaxAlpha) {
            const float v_sigma = -xyo.z * vis * v_alpha;
            g_xy0 = v_sigma * (con.x * dx + con.y * dy);
            g_xy1 = v_sigma * (con.y * dx + con.z * dy);
            g_c0 = 0.5f * v_sigma * dx * dx;
            g_c1 = v_sigma * dx * dy;
            g_c2 = 0.5f * v_sigma * dy * dy;
            g_op = vis * v_alpha;
          }
        }
        g_xy0 = warp_sum(g_xy0);
        g_xy1 = warp_sum(g_xy1);
        g_c0 = warp_sum(g_c0);
        g_c1 = warp_sum(g_c1);
        g_c2 = warp_sum(g_c2);
        g_op = warp_sum(g_op);
#pragma unroll
        for (int q = 0; q < CH; ++q) g_col[q] = warp_sum(g_col[q]);
        if (lane == 0) {
          const int64_t g = s_id[t];
          atomicAdd(v_means2d + 2 * g, g_xy0);
          atomicAdd(v_means2d + 2 * g + 1, g_xy1);
          atomicAdd(v_conics + 3 * g, g_c0);
          atomicAdd(v_conics + 3 * g + 1, g_c1);
          atomicAdd(v_conics + 3 * g + 2, g_c2);
          atomicAdd(v_opac2d + g, g_op);
          float* vc = v_colors + (color_base + (g - img_base)) * d.D + chan0;
#pragma unroll
          for (int q = 0; q < CH; ++q)
            if (q < nch) atomicAdd(vc + q, g_col[q]);
        }
      }
    }
  }
}

template <int CH>
cudaError_t launch_ch(const float* means2d, const float* conics, const float* opac2d, const float* colors,
                      const float* backgrounds, const int32_t* tile_offsets, const int32_t* flatten_ids,
                      int64_t n_isects, const Dims& d, int chan0, int nch, const float* final_Ts,
                      const int32_t* last_ids, const float* v_out_c, const float* v_out_a, float* v_means2d,
                      float* v_conics, float* v_opac2d, float* v_colors, cudaStream_t stream) {
  int nt = ((d.tile_size * d.tile_size + 31) / 32) * 32;
  dim3 grid(d.tiles_x, d.tiles_y, (unsigned)(d.B * d.C));
  size_t shmem = (size_t)nt * (sizeof(int32_t) + sizeof(float4) + sizeof(float3) + CH * sizeof(float));
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(render_bwd_kernel<CH>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)shmem);
    if (e != cudaSuccess) return e;
  }
  render_bwd_kernel<CH><<<grid, nt, shmem, stream>>>(reinterpret_cast<const float2*>(means2d), conics, opac2d, colors,
                                                     backgrounds, tile_offsets, flatten_ids, (int32_t)n_isects, d,
                                                     chan0, nch, final_Ts, last_ids, v_out_c, v_out_a, v_means2d,
                                                     v_conics, v_opac2d, v_colors);
  return cudaGetLastError();
}


// Largest channel chunk whose kernel can run with nt threads per block (register budget: e.g.
// 32x32 tiles have 1024 threads, which the 32-channel instantiations do not fit).
template <int CH>
bool fits(int nt) {
  cudaFuncAttributes a;
  if (cudaFuncGetAttributes(&a, render_bwd_kernel<CH>) != cudaSuccess) return false;
  return a.maxThreadsPerBlock >= nt;
}

inline int max_chunk(int nt) {
  static int cache[33] = {0};  // by warps per block (nt <= 1024); benign race, same value
  int& c = cache[nt / 32];
  if (c == 0) c = fits<32>(nt) ? 32 : fits<16>(nt) ? 16 : fits<8>(nt) ? 8 : fits<4>(nt) ? 4 : fits<2>(nt) ? 2 : 1;
  cudaGetLastError();  // clear a failed attribute query
  return c;
}
}  // namespace

cudaError_t launch_render_bwd(const float* means2d, const float* conics, const float* opac2d, const float* colors,
                              const float* backgrounds, const int32_t* tile_offsets, const int32_t* flatten_ids,
                              int64_t n_isects, const Dims& d, const float* final_Ts, const int32_t* last_ids,
                              const float* v_colors_out, const float* v_alphas_out, float* v_means2d,
                              float* v_conics, float* v_opac2d, float* v_colors, cudaStream_t stream) {
  if (d.B * d.C == 0 || n_isects == 0) return cudaSuccess;
  if (d.B * d.C > 65535) return cudaErrorInvalidConfiguration;
  int64_t D = d.D;
  int64_t chan0 = 0;
  const int chunk = max_chunk(((d.tile_size * d.tile_size + 31) / 32) * 32);
  do {
    int nch = (int)(D - chan0 < chunk ? D - chan0 : chunk);
    cudaError_t e;
#define FFA_CH(CHN)                                                                                           \
  e = launch_ch<CHN>(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, n_isects, d,  \
                     (int)chan0, nch, final_Ts, last_ids, v_colors_out, v_alphas_out, v_means2d, v_conics,   \
                     v_opac2d, v_colors, stream)
    if (nch <= 1) FFA_CH(1);
    else if (nch == 2) FFA_CH(2);
    else if (nch == 3) FFA_CH(3);
    else if (nch == 4) FFA_CH(4);
    else if (nch <= 8) FFA_CH(8);
    else if (nch <= 16) FFA_CH(16);
    else FFA_CH(32);
#undef FFA_CH
    if (e != cudaSuccess) return e;
    chan0 += chunk;
  } while (chan0 < D);
  return cudaSuccess;
}

}  // namespace rasterize
}  // namespace ffa
