// CUDA forward blending: one block per (image, tile); the block walks the tile's depth-sorted splats
// in shared-memory batches, each thread blends its pixel front to back, and the block stops when
// every pixel is saturated. Each warp covers a compact pixel block and, per 32 splats of a batch,
// tests one splat per lane against its pixel rectangle (rasterize_warp.cuh), then blends only the
// hits (ballot bits, in depth order). Channels are processed CH at a time in registers (several
// launches when D > 32: each recomputes alpha, outputs are identical). A batch's splats are staged in
// shared memory as one record each (geometry and CH colour values in whole float4s: one address and
// a few 128-bit broadcast loads per splat). The loop over a warp's kept splats is software-pipelined
// by one (the alpha of the next kept splat, which does not depend on the transmittance, is evaluated
// before the current one is composited), so the latency of one splat's shared loads, quadratic form
// and exp overlaps the previous splat's compositing. Torch-free.
#include "common/splat_math.h"
#include "rasterize/rasterize.h"
#include "rasterize/rasterize_split.h"
#include "rasterize/rasterize_warp.cuh"
#include "rasterize/render_launch.cuh"

namespace ffa {
namespace rasterize {
namespace {

// Shared-memory record of one staged splat, RecF4<CH> float4s: (x, y, opacity, sigma cutoff),
// (conic a / 2, b, c / 2, colour 0), then colours 1.. (zero past nch). One address per splat, 128-bit
// loads (all lanes read the same record: a broadcast, no bank conflicts).
template <int CH>
constexpr int RecF4 = (8 + CH + 3) / 4;



// gsplat's per-pixel decision for one splat at pixel centre (px, py): true: blend with alpha;
// false: skip (alpha is then unused). The floats and the decision of splat_alpha (sigma_alpha), with
// the exp evaluated whatever sigma's sign (the result is not used when sigma < 0), so the code has no
// branch and the next splat's evaluation can be interleaved with the current compositing. The cutoff
// pre-test of the CPU loops (sigma_far) is left out: it only skips an exp, and whatever it skips the
// exact test rejects too (the cutoff sits 1e-3 + 0.01% beyond ln(255 op), where alpha < 0.999 / 255).
__device__ __forceinline__ bool pixel_alpha(const float4& xyo, const float4& con, float px, float py,
                                            float& alpha) {
  const float dx = xyo.x - px, dy = xyo.y - py;
  // con = (a / 2, b, c / 2): a / 2 dx dx + c / 2 dy dy is exactly half of gsplat's a dx dx + c dy dy
  // (scaling by 2^-1 commutes with every rounding, short of denormals, which flush to 0 either way
  // and leave alpha = opacity), so sigma has gsplat's bits without the multiply by 1/2.
  const float sigma = (con.x * dx * dx + con.z * dy * dy) + con.y * dx * dy;
  alpha = splat::s_min(splat::kMaxAlpha, xyo.z * splat::s_exp(-sigma));
  return (sigma >= 0.f) & (alpha >= splat::kAlphaThreshold);
}

// 128-bit load from a shared-memory byte address (the blend loop's records: explicit 32-bit
// addresses keep the address arithmetic at one multiply-add per splat).
__device__ __forceinline__ float4 lds_f4(unsigned addr) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr));
  return v;
}

// 0, in a per-lane register: added to the blend loop's warp-uniform base address so the compiler
// keeps the loop's address arithmetic in ordinary registers (from uniform ones it re-derived the
// base and a negative stride every step, 3-4 extra instructions).
__device__ __forceinline__ unsigned lane_zero() {
  unsigned l;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(l));
  return l >> 5;
}

// Position of the highest set bit of m (-1 when m == 0), and m without that bit (0 stays 0).
__device__ __forceinline__ int pop_top(unsigned& m) {
  int p;
  unsigned b;
  asm("bfind.u32 %0, %1;" : "=r"(p) : "r"(m));
  asm("bmsk.clamp.b32 %0, %1, 1;" : "=r"(b) : "r"(p));  // 1 << p; p = 0xffffffff: 0
  m ^= b;
  return p;
}

// Blends the splats [start, end) of the tile into this thread's pixel, front to back, from the
// given T / acc / last; done pixels (outside, or stopped) take no part. Every thread of the block
// calls it (it synchronizes); shared memory is free again when it returns.
template <int CH>
__device__ __forceinline__ void blend_range(float4* s_rec, const float2* means2d, const float* conics,
                                            const float* opac2d, const float* colors, const int32_t* flatten_ids,
                                            int64_t color_base, int64_t img_base, const Dims& d, int chan0, int nch,
                                            int32_t start, int32_t end, const WarpRect& rect, float px, float py,
                                            float& T, float (&acc)[CH], int32_t& last, bool& done) {
  constexpr int R = RecF4<CH>;
  constexpr unsigned kRecBytes = 16 * R;
  const int nt = blockDim.x, tid = threadIdx.x, lane = tid & 31;
  const unsigned s_base = (unsigned)__cvta_generic_to_shared(s_rec);
  for (int32_t bs = start; bs < end; bs += nt) {
    if (__syncthreads_count(done) == nt) break;
    int32_t k = bs + tid;
    if (k < end) {
      int32_t g = flatten_ids[k];
      float2 mm = means2d[g];
      const float op = opac2d[g];
      const float* c = colors + (color_base + (g - img_base)) * d.D + chan0;
      float rec[4 * R];
      rec[0] = mm.x;
      rec[1] = mm.y;
      rec[2] = op;
      const float ca = conics[3 * (int64_t)g], cb = conics[3 * (int64_t)g + 1], cc = conics[3 * (int64_t)g + 2];
      rec[3] = staged_cutoff(op, ca, cb, cc);
      rec[4] = 0.5f * ca;  // halved: see pixel_alpha
      rec[5] = cb;
      rec[6] = 0.5f * cc;
#pragma unroll
      for (int q = 0; q < 4 * R - 7; ++q) rec[7 + q] = q < CH && q < nch ? __ldg(c + q) : 0.f;
      rec[7 + CH] = __int_as_float(k);
#pragma unroll
      for (int r = 0; r < R; ++r)
        s_rec[tid * R + r] = make_float4(rec[4 * r], rec[4 * r + 1], rec[4 * r + 2], rec[4 * r + 3]);
    }
    __syncthreads();
    const int cnt = min(nt, end - bs);
    for (int c0 = 0; c0 < cnt; c0 += 32) {
      if (__all_sync(kFullMask, done)) break;  // warp-uniform
      // Lane l tests splat c0 + 31 - l: the highest set bit is the front splat (no bit reverse).
      const int tl = c0 + 31 - lane;
      bool hit = false;
      if (tl < cnt) {
        const float4 xyo = s_rec[tl * R], con = s_rec[tl * R + 1];
        hit = warp_may_hit(xyo, make_float3(2.f * con.x, con.y, 2.f * con.z), rect);
      }
      unsigned mask = __ballot_sync(kFullMask, hit);
      if (mask != 0u && !done) {
        // Set bits from the top: bit p is the record at byte top - p * kRecBytes (front to back as p
        // falls). Shared addresses as 32-bit byte addresses: one multiply-add per splat.
        const unsigned top = s_base + (unsigned)(c0 + 31) * kRecBytes + lane_zero();
        // One step: the decision for the next kept splat (an, into alpha_n / use_n / con_n), then the
        // current one (ac) composited as the plain loop does: if used, stop before it when it would
        // take T to <= eps, else blend it. Branch-free, so both halves interleave. false: the walk
        // ends. Two register sets alternate (steps A -> B, B -> A), with no copies between steps.
        auto step = [&](unsigned ac, float alpha, bool use, const float4& con, unsigned& an, float& alpha_n,
                        bool& use_n, float4& con_n) {
          const bool more = mask != 0u;
          an = top - pop_top(mask) * kRecBytes;  // none left: record c0 + 32 (staged, or the spare): unused
          con_n = lds_f4(an + 16);
          use_n = pixel_alpha(lds_f4(an), con_n, px, py, alpha_n) & more;
          const float next_T = T * (1.f - alpha);
          const bool stop = use && next_T <= splat::kTransmittanceEps;
          const float w = alpha * T;
          if (use && !stop) {
            float tail[4 * R - 8];  // colours 1.., the index
#pragma unroll
            for (int r = 2; r < R; ++r) {
              const float4 v = lds_f4(ac + 16 * r);
              tail[4 * r - 8] = v.x;
              tail[4 * r - 7] = v.y;
              tail[4 * r - 6] = v.z;
              tail[4 * r - 5] = v.w;
            }
            acc[0] += con.w * w;
#pragma unroll
            for (int q = 1; q < CH; ++q) acc[q] += tail[q - 1] * w;
            last = __float_as_int(tail[CH - 1]);
            T = next_T;
          }
          done = stop;
          return more && !stop;
        };
        unsigned a_a = top - pop_top(mask) * kRecBytes, a_b;
        float alpha_a, alpha_b;
        bool use_a, use_b;
        float4 con_a = lds_f4(a_a + 16), con_b;
        use_a = pixel_alpha(lds_f4(a_a), con_a, px, py, alpha_a);
        while (step(a_a, alpha_a, use_a, con_a, a_b, alpha_b, use_b, con_b) &&
               step(a_b, alpha_b, use_b, con_b, a_a, alpha_a, use_a, con_a)) {
        }
      }
    }
  }
}

// Register cap of the forward: what the blend loop needs (ptxas would give the rarely run merge of
// split tiles 16 more, a block of 256 threads per SM less on every tile; under the cap, the values it
// keeps across the loop spill around the loop, never inside it).
template <int CH>
constexpr int kFwdMaxRegs = CH <= 3 ? 40 : CH <= 4 ? 48 : CH <= 8 ? 56 : CH <= 16 ? 96 : 128;

// Flag handshake between the chunks of a split tile (release / acquire at GPU scope).
__device__ __forceinline__ int ld_acquire(const int32_t* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(int32_t* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

template <int CH>
__global__ void __maxnreg__(kFwdMaxRegs<CH>)
    render_fwd_kernel(const float2* __restrict__ means2d, const float* __restrict__ conics,
                                  const float* __restrict__ opac2d, const float* __restrict__ colors,
                                  const float* __restrict__ backgrounds, const int32_t* __restrict__ tile_offsets,
                                  const int32_t* __restrict__ flatten_ids, int32_t n_isects,
                                  const int32_t* __restrict__ n_isects_dev, Dims d, int chan0, int nch, Split sp,
                                  float* __restrict__ out_c, float* __restrict__ out_a,
                                  int32_t* __restrict__ last_ids, float* __restrict__ final_Ts) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int nt = blockDim.x;
  // [nt + 1, RecF4<CH>] staged splats and one spare record (read, unused, past the last chunk's last
  // kept splat)
  float4* s_rec = reinterpret_cast<float4*>(smem);
  int& s_flag = *reinterpret_cast<int*>(s_rec + (nt + 1) * RecF4<CH>);

  BlockTile bt;
  if (!block_tile(sp, d, tile_offsets, isect_end(n_isects, n_isects_dev), bt)) return;
  const int64_t m = bt.m;
  const int k = bt.k, nsplit = bt.nsplit, slot0 = bt.slot0, i = bt.i, j = bt.j, tid = threadIdx.x;
  const bool inside = bt.inside;
  const int32_t start = bt.start, end = bt.end;
  const int64_t cam = m % d.C, b = m / d.C;
  const int64_t color_base = (b * d.Cc + (d.Cc == 1 ? 0 : cam)) * d.N;
  const int64_t img_base = m * d.N;
  const int64_t pix = (m * d.H + i) * (int64_t)d.W + j;
  const float px = (float)j + 0.5f, py = (float)i + 0.5f;
  const WarpRect rect = warp_rect(inside, i, j);

  int32_t cs = start, ce = end;
  if (nsplit > 1) chunk_range(start, end, k, nsplit, cs, ce);
  float T = 1.f;
  float acc[CH];
#pragma unroll
  for (int c = 0; c < CH; ++c) acc[c] = 0.f;
  int32_t last = -1;
  bool done = !inside;
  blend_range<CH>(s_rec, means2d, conics, opac2d, colors, flatten_ids, color_base, img_base, d, chan0, nch, cs, ce,
                  rect, px, py, T, acc, last, done);

  float* o = out_c + pix * d.D + chan0;
  if (nsplit > 1) {
    // Chunk k of a split tile (rasterize_split.h). Rows: slot j = chunk j's T behind it (word 0) and
    // chunk j + 1's last id and colour; flags: "T behind chunk j published"; then the arrivals.
    auto row = [&](int jj) { return sp.slots + ((int64_t)(slot0 + jj) * nt + tid) * sp.stride; };
    int32_t* const flags = sp.counters + slot0;
    int32_t* const arrivals = sp.counters + sp.pool + slot0;
    // the T in front of this chunk (chunk k - 1 publishes it; negative: the pixel finished before)
    float P = 1.f;
    if (k > 0) {
      if (tid == 0)
        while (ld_acquire(flags + k - 1) == 0) __nanosleep(64);
      __syncthreads();
      if (inside) P = __ldcg(row(k - 1));
    }
    // whole: T behind = P T_k, colour P C_k; finished here: blended again below from T = P (chunk 0
    // needs no second walk: its T in front is 1); finished before: nothing
    const bool before = P < 0.f;
    const bool here = inside && !before && (done || (k > 0 && P * T <= splat::kTransmittanceEps));
    const bool again = here && k > 0;
    float Tb = before ? -1.f : here ? (k == 0 ? -T : -1.f) : P * T;
    if (k < nsplit - 1) {
      if (inside) row(k)[0] = Tb;
      __threadfence();
      __syncthreads();
      if (tid == 0) st_release(flags + k, 1);
    }
    if (before || !inside) {
#pragma unroll
      for (int q = 0; q < CH; ++q) acc[q] = 0.f;
      last = -1;
    } else if (!here) {
#pragma unroll
      for (int q = 0; q < CH; ++q) acc[q] *= P;
    }
    if (__syncthreads_or(again)) {  // the exact walk from the true T, for the pixels that stop here
      if (again) {
#pragma unroll
        for (int q = 0; q < CH; ++q) acc[q] = 0.f;
        T = P;
        last = -1;
      }
      done = !again;
      blend_range<CH>(s_rec, means2d, conics, opac2d, colors, flatten_ids, color_base, img_base, d, chan0, nch, cs,
                      ce, rect, px, py, T, acc, last, done);
      if (again) {
        Tb = -T;  // finished (even if the walk did not stop: the chunks behind have skipped it)
        if (k < nsplit - 1) row(k)[0] = Tb;
      }
    }
    if (inside) {
      if (k == 0) {
#pragma unroll
        for (int q = 0; q < CH; ++q)
          if (q < nch) o[q] = acc[q];
        last_ids[pix] = last;
      } else {
        float* r = row(k - 1);
        r[1] = __int_as_float(last);
#pragma unroll
        for (int q = 0; q < CH; ++q)
          if (q < nch) r[2 + chan0 + q] = acc[q];
      }
      if (k == nsplit - 1) final_Ts[pix] = Tb;
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) s_flag = atomicAdd(arrivals, 1) == nsplit - 1;
    __syncthreads();
    if (!s_flag) return;  // not the tile's last block
    __threadfence();
    if (tid == 0) {  // reset for the next launch (channel chunk or call)
      *arrivals = 0;
      for (int jj = 0; jj < nsplit - 1; ++jj) flags[jj] = 0;
    }
    if (!inside) return;
    // Merge: the final T is the T behind the first chunk where the pixel finished (else the last
    // chunk's); the last id is the last chunk's that blended anything; back to front, the colour of
    // every chunk behind chunk j goes where the backward of chunk j starts.
    T = 0.f;
    bool found = false;
    for (int jj = 0; jj < nsplit - 1 && !found; ++jj) {
      const float t = __ldcg(row(jj));
      if (t < 0.f) {
        T = -t;
        found = true;
      }
    }
    if (!found) T = fabsf(__ldcg(final_Ts + pix));
    last = __ldcg(last_ids + pix);
    float S[CH];
#pragma unroll
    for (int q = 0; q < CH; ++q) S[q] = 0.f;
    for (int jj = nsplit - 2; jj >= 0; --jj) {
      float* r = row(jj);
      const int32_t lk = __float_as_int(__ldcg(r + 1));
      if (lk > last) last = lk;  // ids grow with the chunk: the largest one is the last chunk's
      r[0] = fabsf(__ldcg(r));   // the T behind chunk jj, where its backward starts
#pragma unroll
      for (int q = 0; q < CH; ++q) {
        S[q] += q < nch ? __ldcg(r + 2 + chan0 + q) : 0.f;
        if (q < nch) r[2 + chan0 + q] = S[q];
      }
    }
#pragma unroll
    for (int q = 0; q < CH; ++q) acc[q] = (q < nch ? __ldcg(o + q) : 0.f) + S[q];
  }
  if (!inside) return;
  const float* bg = backgrounds ? backgrounds + m * d.D + chan0 : nullptr;
#pragma unroll
  for (int q = 0; q < CH; ++q)
    if (q < nch) o[q] = acc[q] + (bg ? T * bg[q] : 0.f);
  if (chan0 == 0 || nsplit > 1) {
    out_a[pix] = 1.f - T;
    final_Ts[pix] = T;
    last_ids[pix] = last;
  }
}

// Dynamic shared memory of one block: per thread one splat's record, a spare record; the merge flag.
template <int CH>
size_t shmem_bytes(int nt) {
  return (size_t)(nt + 1) * RecF4<CH> * sizeof(float4) + sizeof(int);
}

// The forward's kernel family for render_launch.cuh.
struct FwdKernels {
  template <int CH>
  static auto kernel() { return &render_fwd_kernel<CH>; }
  template <int CH>
  static size_t shmem(int nt) { return shmem_bytes<CH>(nt); }
};
}  // namespace

cudaError_t launch_render_fwd(const float* means2d, const float* conics, const float* opac2d, const float* colors,
                              const float* backgrounds, const int32_t* tile_offsets, const int32_t* flatten_ids,
                              int64_t n_isects, const int32_t* n_isects_dev, const Dims& d, const Split& sp,
                              float* out_colors, float* out_alphas, int32_t* last_ids, float* final_Ts,
                              cudaStream_t stream) {
  if (d.B * d.C == 0) return cudaSuccess;
  return for_each_chunk<FwdKernels>(d, [&](auto ch, int chan0, int nch) {
    return launch_chunk<FwdKernels, decltype(ch)::value>(
        d, sp, stream, reinterpret_cast<const float2*>(means2d), conics, opac2d, colors, backgrounds, tile_offsets,
        flatten_ids, (int32_t)n_isects, n_isects_dev, d, chan0, nch, sp, out_colors, out_alphas, last_ids,
        final_Ts);
  });
}

}  // namespace rasterize
}  // namespace ffa
