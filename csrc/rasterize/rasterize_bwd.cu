// CUDA backward blending: one block per (image, tile), splats visited back to front in shared-memory
// batches (only up to the block's largest last_id); each thread recovers its transmittance by
// division (as gsplat), the 6+CH per-splat gradients of the 32 pixels of a warp are summed with one
// transposed warp reduction (reduce-scatter: each lane ends up with one of the sums), and the lanes
// that own a sum add it to the per-(image, Gaussian) buffers with atomics, all in one instruction.
// Channels are handled CH at a time (all gradients are linear in the channel terms, so chunks simply
// add up).
// Warp culling as in the forward (rasterize_warp.cuh): per 32 splats of a batch each lane tests one
// against the warp's pixel rectangle, and only the ballot hits up to the warp's largest last id are
// evaluated, reduced and added. A chunk of a split tile (rasterize_split.h) is its own block: it walks
// its part of the list from the transmittance after it and the colour behind it, which the forward's
// merge left in the split state.
#include "common/splat_math.h"
#include "rasterize/rasterize.h"
#include "rasterize/rasterize_split.h"
#include "rasterize/rasterize_warp.cuh"
#include "rasterize/render_launch.cuh"

namespace ffa {
namespace rasterize {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

constexpr int ceil_pow2(int n) { return n <= 1 ? 1 : 2 * ceil_pow2((n + 1) / 2); }
constexpr int floor_pow2(int n) { return n <= 1 ? 1 : 2 * floor_pow2(n / 2); }
constexpr int log2_exact(int n) { return n <= 1 ? 0 : 1 + log2_exact(n / 2); }

// One round of warp_reduce_scatter over the first 2 H values of v, xor offset O.
template <int H, int O, int N>
__device__ __forceinline__ void reduce_scatter_round(float (&v)[N], bool upper) {
#pragma unroll
  for (int i = 0; i < H; ++i) {
    const float send = upper ? v[i] : v[i + H];
    const float keep = upper ? v[i + H] : v[i];
    v[i] = keep + __shfl_xor_sync(kFullMask, send, O);
  }
}

// Transposed warp reduction (reduce-scatter) of N values per lane, N a power of two <= 32. Xor
// rounds with offsets 16, 8, 4, ...: in the round over n values the lane whose offset bit is set
// keeps the upper n/2 values and sends the lower n/2, its partner the reverse, and each adds what
// it receives to what it keeps. After log2(N) rounds a lane holds one value, summed over the lanes
// that differ from it in the offset bits used so far; the remaining 5 - log2(N) rounds are plain
// xor butterflies on it. Returns the warp sum of v[lane / (32 / N)] (the 32 / N lanes of a group
// all hold it). N - 1 + 5 - log2(N) shuffles (9 for N = 8, 16 for N = 16) instead of 5 N. Every
// lane of the warp must call it; v is clobbered.
template <int N>
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[N], int lane) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N: a power of two <= 32");
  // the round that keeps H values uses offset 32 H / N: 16 first, 32 / N last
  if constexpr (N >= 32) reduce_scatter_round<16, 512 / N, N>(v, (lane & (512 / N)) != 0);
  if constexpr (N >= 16) reduce_scatter_round<8, 256 / N, N>(v, (lane & (256 / N)) != 0);
  if constexpr (N >= 8) reduce_scatter_round<4, 128 / N, N>(v, (lane & (128 / N)) != 0);
  if constexpr (N >= 4) reduce_scatter_round<2, 64 / N, N>(v, (lane & (64 / N)) != 0);
  if constexpr (N >= 2) reduce_scatter_round<1, 32 / N, N>(v, (lane & (32 / N)) != 0);
  float s = v[0];
#pragma unroll
  for (int o = 16 / N; o > 0; o >>= 1) s += __shfl_xor_sync(kFullMask, s, o);
  return s;
}

// Warp sums of the C values vals[B .. B+C), reduce-scattered as one group padded with zeros to
// N = ceil_pow2(C) values. k = B + lane / (32 / N) is the value whose sum this lane holds; true for
// the one lane per value that should add it (lane R of its group of 32 / N; padding excluded).
template <int B, int C, int R, int NV>
__device__ __forceinline__ bool group_sums(const float (&vals)[NV], int lane, int& k, float& sum) {
  static_assert(C >= 1 && B + C <= NV, "group inside the values");
  constexpr int N = ceil_pow2(C), G = 32 / N;
  static_assert(R < G, "owner lane inside its group");
  float v[N];
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = i < C ? vals[B + i] : 0.f;
  sum = warp_reduce_scatter<N>(v, lane);
  k = B + lane / G;
  return lane % G == R && lane / G < C;
}

// How many of NV values go into the first reduce-scatter group: all of them (padded to a power of
// two), or floor_pow2(NV), the rest making a second group, when that takes fewer shuffles (e.g.
// 9 = 8 + 1: 9 + 5 shuffles instead of 16, and fewer live registers than 16 padded values). With
// two groups the first has at most 16 values, so its sums sit in groups of >= 2 lanes and lane 0
// of each adds it; the second group's sums are added by lane 1 of theirs: one value per lane.
constexpr int rs_shuffles(int n) { return n - 1 + 5 - log2_exact(n); }
constexpr int rs_head(int nv) {
  return nv > floor_pow2(nv) && rs_shuffles(floor_pow2(nv)) + rs_shuffles(ceil_pow2(nv - floor_pow2(nv))) <
                                     rs_shuffles(ceil_pow2(nv))
             ? floor_pow2(nv)
             : nv;
}

// Register cap: what the kernel took before split tiles (whose chunk setup would otherwise cost a block
// of 256 threads per SM at CH <= 4).
template <int CH>
constexpr int kBwdMaxRegs = CH <= 3 ? 48 : CH == 4 ? 56 : 255;

// Deterministic mode (DetAccum, rasterize.h): where the kernel adds a warp sum v to element e of
// gradient buffer `kind`. Pass 1: the float atomic plus the block's running max |v| (shared, flushed
// to the global max once per block: 4 global addresses would serialize millions of atomics); pass 2:
// the fixed-point atomic (skipped for a kind whose max is not finite: the host keeps pass 1's floats).
__device__ __forceinline__ void det_add(const DetAccum& det, int* s_max, int kind, float* base, int64_t e,
                                        float v) {
  if (det.pass == 1) {
    atomicAdd(base + e, v);
    atomicMax(s_max + kind, __float_as_int(fabsf(v)));  // non-negative floats order as their bits
  } else if (v != 0.f) {
    const float m = __int_as_float(det.maxbits[kind]);
    if (!(m <= 3.402823466e38f)) return;  // NaN / Inf somewhere: pass 1's result stands
    int ex;
    frexpf(m, &ex);  // m < 2^ex, and |v| <= m
    const long long q = __double2ll_rn(ldexp((double)v, det.bits[kind] - ex));
    atomicAdd(det.fx[kind] + e, (unsigned long long)q);  // two's complement: signed sums wrap right
  }
}

// The deterministic kernels: 64 registers at most for CH <= 4, so that CH = 1 fits 32x32 tiles
// (1,024 threads) and 16x16 tiles keep 4 blocks per SM (uncapped they take 64-77).
template <int CH, bool DET>
__global__ void __maxnreg__(DET ? (CH <= 4 ? 64 : 255) : kBwdMaxRegs<CH>)
    render_bwd_kernel(const float2* __restrict__ means2d, const float* __restrict__ conics,
                                  const float* __restrict__ opac2d, const float* __restrict__ colors,
                                  const float* __restrict__ backgrounds, const int32_t* __restrict__ tile_offsets,
                                  const int32_t* __restrict__ flatten_ids, int32_t n_isects, Dims d, int chan0,
                                  int nch, Split sp, const float* __restrict__ final_Ts,
                                  const int32_t* __restrict__ last_ids, const float* __restrict__ v_out_c,
                                  const float* __restrict__ v_out_a, GradStrides gs, float* __restrict__ v_means2d,
                                  float* __restrict__ v_conics, float* __restrict__ v_opac2d,
                                  float* __restrict__ v_colors, DetAccum det) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int nt = blockDim.x;
  int32_t* s_id = reinterpret_cast<int32_t*>(smem);
  float4* s_xyo = reinterpret_cast<float4*>(s_id + nt);  // x, y, opacity, staged_cutoff
  float3* s_con = reinterpret_cast<float3*>(s_xyo + nt);
  float* s_col = reinterpret_cast<float*>(s_con + nt);  // [nt, CH]
  // in the dynamic buffer too (no static shared memory): the launch's opt-in test sees all of it
  int& s_maxlast = *reinterpret_cast<int*>(s_col + nt * CH);
  int* const s_max = &s_maxlast + 1;  // [4] (deterministic pass 1 only; shmem_bytes<CH, true> has room)

  BlockTile bt;
  if (!block_tile(sp, d, tile_offsets, n_isects, bt)) return;
  const int64_t m = bt.m;
  const int k = bt.k, nsplit = bt.nsplit, slot0 = bt.slot0, i = bt.i, j = bt.j;
  const int tid = threadIdx.x, lane = tid & 31;
  const bool inside = bt.inside;
  int32_t start = bt.start, end = bt.end;
  // a chunk of a split tile starts from the T after it and the colour behind it (the forward's merge)
  const float* row = nullptr;
  if (nsplit > 1) {
    int32_t cs, ce;
    chunk_range(start, end, k, nsplit, cs, ce);
    start = cs;
    end = ce;
    if (k < nsplit - 1) row = sp.slots + ((int64_t)(slot0 + k) * nt + tid) * sp.stride;
  }
  const int64_t cam = m % d.C, b = m / d.C;
  const int64_t color_base = (b * d.Cc + (d.Cc == 1 ? 0 : cam)) * d.N;
  const int64_t img_base = m * d.N;
  const int64_t pix = (m * d.H + i) * (int64_t)d.W + j;

  const int32_t last = inside ? last_ids[pix] : -1;
  if (tid == 0) s_maxlast = -1;
  if constexpr (DET) {
    if (tid < 4) s_max[tid] = 0;
  }
  __syncthreads();
  if (last >= 0) atomicMax(&s_maxlast, last);
  __syncthreads();
  const int32_t range_end = min(end, s_maxlast + 1);  // exclusive
  if (range_end <= start) return;           // uniform across the block
  const int32_t wlast = __reduce_max_sync(kFullMask, last);  // -1: nothing to do for this warp
  const WarpRect rect = warp_rect(inside, i, j);

  const float px = (float)j + 0.5f, py = (float)i + 0.5f;
  const float T_final = inside ? final_Ts[pix] : 1.f;
  float T = row && inside ? row[0] : T_final;
  float vrc[CH], buf[CH];
  float bg_dot = 0.f;
#pragma unroll
  for (int q = 0; q < CH; ++q) {
    vrc[q] = (inside && q < nch) ? v_out_c[pix * gs.vc_pix + (chan0 + q) * gs.vc_ch] : 0.f;
    buf[q] = row && inside && q < nch ? row[2 + chan0 + q] : 0.f;
    if (backgrounds && q < nch) bg_dot += backgrounds[m * d.D + chan0 + q] * vrc[q];
  }
  const float vra = (inside && chan0 == 0) ? v_out_a[pix * gs.va_pix] : 0.f;

  for (int32_t be = range_end; be > start; be -= nt) {
    const int32_t bstart = max(start, be - nt);
    __syncthreads();  // previous batch consumed
    int32_t k = be - 1 - tid;
    if (k >= bstart) {
      int32_t g = flatten_ids[k];
      s_id[tid] = g;
      float2 mm = means2d[g];
      const float op = opac2d[g];
      const float3 con = make_float3(conics[3 * (int64_t)g], conics[3 * (int64_t)g + 1], conics[3 * (int64_t)g + 2]);
      s_xyo[tid] = make_float4(mm.x, mm.y, op, staged_cutoff(op, con.x, con.y, con.z));
      s_con[tid] = con;
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
        bool valid = false;
        if (inside && kk <= last) {  // cutoff pre-test and gsplat's exact test share one sigma
          const float sigma = splat::splat_sigma<float>(xyo.x, xyo.y, con.x, con.y, con.z, px, py, dx, dy);
          valid = !splat::sigma_far<float>(sigma, xyo.w) && splat::sigma_alpha<float>(sigma, xyo.z, alpha, vis);
        }
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
        constexpr int NV = 6 + CH;  // gradient values per splat: mean2d 2, conic 3, opacity 1, colours CH
        if constexpr (NV <= 32) {
          float vals[NV];
          vals[0] = g_xy0;
          vals[1] = g_xy1;
          vals[2] = g_c0;
          vals[3] = g_c1;
          vals[4] = g_c2;
          vals[5] = g_op;
#pragma unroll
          for (int q = 0; q < CH; ++q) vals[6 + q] = g_col[q];
          // the lane that holds the warp sum of value k adds it (several lanes at once)
          constexpr int H = rs_head(NV);
          int k;
          float sum;
          bool own = group_sums<0, H, 0>(vals, lane, k, sum);
          if constexpr (H < NV) {
            static_assert(H <= 16, "two groups: the first leaves room for owner lane 1");
            int k2;
            float sum2;
            if (group_sums<H, NV - H, 1>(vals, lane, k2, sum2)) {  // never a lane that owns a first-group sum
              own = true;
              k = k2;
              sum = sum2;
            }
          }
          if (own && k < 6 + nch) {
            const int64_t g = s_id[t];
            float* const base = k < 2 ? v_means2d : k < 5 ? v_conics : k < 6 ? v_opac2d : v_colors;
            const int64_t mul = k < 2 ? 2 : k < 5 ? 3 : k < 6 ? 1 : d.D;
            const int64_t add = k < 2 ? k : k < 5 ? k - 2 : k < 6 ? 0 : (color_base - img_base) * d.D + chan0 + (k - 6);
            if constexpr (DET)
              det_add(det, s_max, k < 2 ? 0 : k < 5 ? 1 : k < 6 ? 2 : 3, base, g * mul + add, sum);
            else
              atomicAdd(base + (g * mul + add), sum);
          }
        } else {
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
            const int64_t cbase = (color_base + (g - img_base)) * d.D + chan0;
            if constexpr (DET) {
              det_add(det, s_max, 0, v_means2d, 2 * g, g_xy0);
              det_add(det, s_max, 0, v_means2d, 2 * g + 1, g_xy1);
              det_add(det, s_max, 1, v_conics, 3 * g, g_c0);
              det_add(det, s_max, 1, v_conics, 3 * g + 1, g_c1);
              det_add(det, s_max, 1, v_conics, 3 * g + 2, g_c2);
              det_add(det, s_max, 2, v_opac2d, g, g_op);
#pragma unroll
              for (int q = 0; q < CH; ++q)
                if (q < nch) det_add(det, s_max, 3, v_colors, cbase + q, g_col[q]);
            } else {
              atomicAdd(v_means2d + 2 * g, g_xy0);
              atomicAdd(v_means2d + 2 * g + 1, g_xy1);
              atomicAdd(v_conics + 3 * g, g_c0);
              atomicAdd(v_conics + 3 * g + 1, g_c1);
              atomicAdd(v_conics + 3 * g + 2, g_c2);
              atomicAdd(v_opac2d + g, g_op);
#pragma unroll
              for (int q = 0; q < CH; ++q)
                if (q < nch) atomicAdd(v_colors + cbase + q, g_col[q]);
            }
          }
        }
      }
    }
  }
  if constexpr (DET) {  // pass 1: the block's largest terms into the global maxima
    if (det.pass == 1) {
      __syncthreads();
      if (tid < 4 && s_max[tid] != 0) atomicMax(det.maxbits + tid, s_max[tid]);
    }
  }
}

// Dynamic shared memory of one block (all of its shared memory): per thread one splat's id, geometry
// and CH colour values, and the block's largest last id.
// The deterministic kernels add the block's 4 largest terms (pass 1).
template <int CH, bool DET = false>
size_t shmem_bytes(int nt) {
  return (size_t)nt * (sizeof(int32_t) + sizeof(float4) + sizeof(float3) + CH * sizeof(float)) + sizeof(int) +
         (DET ? 4 * sizeof(int) : 0);
}

// The backward's kernel families for render_launch.cuh: the usual one and the deterministic one.
template <bool DET>
struct BwdKernelsT {
  template <int CH>
  static auto kernel() { return &render_bwd_kernel<CH, DET>; }
  template <int CH>
  static size_t shmem(int nt) { return shmem_bytes<CH, DET>(nt); }
};
using BwdKernels = BwdKernelsT<false>;
using BwdDetKernels = BwdKernelsT<true>;

// Zero the four gradient buffers of the render backward in one launch (blockIdx.y picks the buffer):
// one kernel instead of four cudaMemsetAsync calls, each of which costs host time.
struct ZeroBufs {
  float* p[4];
  int64_t n[4];
};

__global__ void zero4_kernel(ZeroBufs z) {
  float* p = z.p[blockIdx.y];
  const int64_t n = z.n[blockIdx.y];
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    p[e] = 0.f;
}
}  // namespace

cudaError_t launch_zero4(float* const p[4], const int64_t n[4], cudaStream_t stream) {
  ZeroBufs z;
  int64_t most = 0;
  for (int b = 0; b < 4; ++b) {
    z.p[b] = p[b];
    z.n[b] = n[b];
    most = n[b] > most ? n[b] : most;
  }
  if (most == 0) return cudaSuccess;
  const int64_t blocks = (most + 255) / 256;
  zero4_kernel<<<dim3((unsigned)(blocks < 1024 ? blocks : 1024), 4), 256, 0, stream>>>(z);
  return cudaGetLastError();
}

cudaError_t launch_render_bwd(const float* means2d, const float* conics, const float* opac2d, const float* colors,
                              const float* backgrounds, const int32_t* tile_offsets, const int32_t* flatten_ids,
                              int64_t n_isects, const Dims& d, const Split& sp, const float* final_Ts,
                              const int32_t* last_ids, const float* v_colors_out, const float* v_alphas_out,
                              GradStrides gs, float* v_means2d, float* v_conics, float* v_opac2d, float* v_colors,
                              const DetAccum* det, cudaStream_t stream) {
  if (d.B * d.C == 0 || n_isects == 0) return cudaSuccess;
  auto run = [&](auto family) {
    using K = decltype(family);
    return for_each_chunk<K>(d, [&](auto ch, int chan0, int nch) {
      return launch_chunk<K, decltype(ch)::value>(
          d, sp, stream, reinterpret_cast<const float2*>(means2d), conics, opac2d, colors, backgrounds, tile_offsets,
          flatten_ids, (int32_t)n_isects, d, chan0, nch, sp, final_Ts, last_ids, v_colors_out, v_alphas_out, gs,
          v_means2d, v_conics, v_opac2d, v_colors, det ? *det : DetAccum{});
    });
  };
  return det ? run(BwdDetKernels{}) : run(BwdKernels{});
}

}  // namespace rasterize
}  // namespace ffa
