// Tile-based 3D Gaussian splatting (gsplat 1.5.3 conventions), forward and backward.
//
// The public op (ffavatar_kernels.rasterize) is composed in Python from five registered ops, each
// batched over B scenes x C cameras = M images (shapes below use B, C, N, D, H, W, T = tiles). Every
// op also takes its tensors without the leading B (one scene; outputs then have no B either), and
// colors may be [B,N,D] (shared by the cameras, as [B,1,N,D]):
//
//   rasterize_project(means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N],
//                     viewmats [B,C,4,4], Ks [B,C,3,3], width, height, near, far, eps2d,
//                     antialiased, tile_size)
//     -> means2d [B,C,N,2], depths [B,C,N], conics [B,C,N,3], opacities2d [B,C,N] (opacity x
//        compensation when antialiased), radii [B,C,N,2] i32, tiles_per_gauss [B,C,N] i32
//   rasterize_project_bwd(... inputs ..., radii, v_means2d, v_depths, v_conics, v_opacities2d, width,
//                         height, tile_size, eps2d, antialiased)
//     -> v_means, v_quats, v_scales, v_opacities   (summed over cameras, no atomics)
//   rasterize_bin(means2d, radii, depths, conics, opacities2d, tiles_per_gauss, width, height,
//                 tile_size) -> tile_offsets [B,C,TH,TW] i32, flatten_ids [n_isects] i32
//     (intersections sorted by image, tile, depth, then flatten id = m*N + n)
//   rasterize_render(means2d, conics, opacities2d, colors [B,Cc,N,D] (Cc = 1 or C),
//                    backgrounds [B,C,D]?, tile_offsets, flatten_ids, width, height, tile_size)
//     -> render_colors [B,C,H,W,D], render_alphas [B,C,H,W,1], last_ids [B,C,H,W] i32 (-1: none),
//        final_Ts [B,C,H,W,1] (final transmittance, kept exactly: 1 - alpha loses it in fp32),
//        split_state [n] i32 (CUDA: heavy tiles blended in chunks, rasterize_split.h; CPU: empty)
//   rasterize_render_bwd(..., final_Ts, last_ids, v_render_colors, v_render_alphas, ...,
//                        split_state?)  (None: every tile in one block; same gradients up to rounding)
//     -> v_means2d, v_conics, v_opacities2d, v_colors
//   (v_render_colors / v_render_alphas, and v_depths of rasterize_project_bwd, are read through
//   strides when their pixel / image-Gaussian dims flatten, e.g. the expanded gradient of a sum)
//
// This header is torch-free: it declares the CUDA launchers implemented in rasterize_*.cu (raw
// pointers, sizes, a stream; they return the launch error). All buffers are allocated by the torch
// glue (rasterize_cuda.cpp), including CUB's temporary storage.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_runtime.h>
#else
#if defined(FFAVATAR_WITH_CUDA)
#include <cuda_runtime.h>
#endif
#endif

namespace ffa {
namespace rasterize {

// Sizes shared by the launchers.
struct Dims {
  int64_t B, C, N;      // scenes, cameras per scene, Gaussians per scene
  int64_t Cc;           // colour sets per scene: 1 (shared by the cameras) or C
  int64_t D;            // channels
  int W, H, tile_size;  // image and tile size
  int tiles_x, tiles_y;
};

#if defined(__CUDACC__) || defined(FFAVATAR_WITH_CUDA)
// Thread-per-element launches (projection, bin): block size and blocks for n elements.
constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

// Projection of every (image, Gaussian) pair, fused with the tight tile count.
cudaError_t launch_project_fwd(const float* means, const float* quats, const float* scales, const float* opacities,
                               const float* viewmats, const float* Ks, const Dims& d, float near_plane,
                               float far_plane, float eps2d, bool antialiased, int32_t* radii, float* means2d,
                               float* depths, float* conics, float* opac2d, int32_t* tiles_per_gauss,
                               cudaStream_t stream);

// Per Gaussian (thread over B*N), loops over the C cameras: gradients of the projection.
// v_depths of (image m, Gaussian n) is v_depths[(m*N + n) * v_depths_stride] (1: contiguous; 0: one
// broadcast value, e.g. an expanded zero when depths get no gradient).
cudaError_t launch_project_bwd(const float* means, const float* quats, const float* scales, const float* opacities,
                               const float* viewmats, const float* Ks, const Dims& d, float eps2d, bool antialiased,
                               const int32_t* radii, const float* v_means2d, const float* v_depths,
                               int64_t v_depths_stride, const float* v_conics, const float* v_opac2d,
                               float* v_means, float* v_quats, float* v_scales, float* v_opacities,
                               cudaStream_t stream);

// Onesweep sorts (rasterize_bin_sort.cu): CUB's onesweep kernels dispatched here, every counter
// they use in one region of sort_state_words(n, end_bit) int32 words that the caller zeroes before
// the digit counts (one memset, or inside its own kernel). The digit counts (then offsets) come from
// the kernel that writes the keys (launch_depth_keys, launch_emit_keys). Sorts of more than
// onesweep_ok's limit (~268M items) take launch_sort_pairs.
constexpr int kSortRadixBits = 8;
constexpr int kSortDigits = 1 << kSortRadixBits;
struct SortState {
  uint32_t* bins = nullptr;     // [passes, kSortDigits]: digit counts, then their exclusive sums
  int32_t* ctrs = nullptr;      // [passes]: the onesweep blocks' tickets
  int32_t* done = nullptr;      // [1]: blocks of launch_depth_keys done counting
  int32_t* lookback = nullptr;  // [passes, blocks, kSortDigits]
  int passes = 0, end_bit = 0;
  int64_t n = 0, blocks = 0;
};
bool onesweep_ok(int64_t n);
int64_t sort_state_words(int64_t n, int end_bit);
SortState sort_state(int32_t* words, int64_t n, int end_bit);
// The passes over bits [0, s.end_bit): keys / values [s.n] in, the sorted pairs in keys_alt /
// values_alt when *result_in_alt, else in keys / values. Stable.
cudaError_t launch_onesweep(const SortState& s, uint32_t* keys, uint32_t* keys_alt, int32_t* values,
                            int32_t* values_alt, bool* result_in_alt, cudaStream_t stream);
// Binning (rasterize_bin.cu; sizes over the M*N pairs). Step 1: depth keys keys[i] = the bits of
// depths[i] and ids[i] = i, keys / ids [n]. sort != nullptr: also the digit offsets of the depth
// sort (sort->bins, from zeroed counters; the last block scans them), and zero [zero_words] int32
// (e.g. the tile sort's state) on the way.
cudaError_t launch_depth_keys(const float* depths, int64_t n, uint32_t* keys, int32_t* ids, const SortState* sort,
                              int32_t* zero, int64_t zero_words, cudaStream_t stream);
// Steps 2 and 5: radix sort of (key, value) pairs on bits [0, end_bit) with CUB double buffers
// (keys/values hold the input; *result_in_alt tells whether the sorted pairs are in keys_alt /
// values_alt). Stable. keys, keys_alt, values, values_alt [n]. Step 2 sorts the pairs by depth (all 32
// bits), step 5 the intersections by image and tile.
// temp == nullptr: writes the needed temp bytes into *temp_bytes and returns.
cudaError_t launch_sort_pairs(void* temp, size_t* temp_bytes, uint32_t* keys, uint32_t* keys_alt, int32_t* values,
                              int32_t* values_alt, int64_t n, int end_bit, bool* result_in_alt,
                              cudaStream_t stream);
// Step 3: inclusive scan of the tile counts in depth order, offsets[s] = sum of counts[order[t]] for
// t <= s: counts [M*N] i32 (tiles_per_gauss), order [M*N] i32 (step 2's sorted ids), offsets [M*N]
// i32 (the last is the intersection count).
// temp == nullptr: writes the needed temp bytes into *temp_bytes and returns.
cudaError_t launch_scan_counts(void* temp, size_t* temp_bytes, const int32_t* counts, const int32_t* order,
                               int32_t* offsets, int64_t n, cudaStream_t stream);
// Step 4: emit keys (image << tile_bits | tile) and values (flatten ids) of every intersection, the
// pairs in depth order: means2d [M*N,2], radii [M*N,2] i32, conics [M*N,3], opac2d [M*N], order and
// offsets [M*N] i32 (steps 2 and 3) -> keys, values [capacity]. Writes only slots k in [0, capacity):
// intersection k goes to slot k (k < the count, the last offset); capacity may be below the count (a
// speculative buffer; the rest is not emitted) or above it (sentinels: the keys past the count are
// set to all ones, their values to -1; else those slots are left as they are).
// sort != nullptr (sort->n == capacity): also the digit offsets of the tile sort, as launch_depth_keys.
cudaError_t launch_emit_keys(const float* means2d, const int32_t* radii, const float* conics, const float* opac2d,
                             const int32_t* order, const int32_t* offsets, const Dims& d, uint32_t* keys,
                             int32_t* values, int64_t capacity, bool sentinels, const SortState* sort,
                             cudaStream_t stream);
// Step 6: tile offsets [M*T] i32 (every entry written) from the first n sorted keys, sorted_keys
// [n_isects]. n_isects_dev == nullptr: n = n_isects (> 0; 0 launches nothing). Otherwise n is read on
// the device, n = clamp(*n_isects_dev, 0, n_isects) (n_isects is then the buffer's capacity; a
// count above it gives offsets of the first n_isects keys only), and n == 0 writes all zeros.
cudaError_t launch_tile_offsets(const uint32_t* sorted_keys, int64_t n_isects, const int32_t* n_isects_dev,
                                const Dims& d, int32_t* tile_offsets, cudaStream_t stream);

// Rendering (one block per tile, or per chunk of a split tile: rasterize_split.h).
struct Split;
// Step 0: the split plan (rasterize_split.cu) into state [split_state_words(G, pool, nt, D)] int32,
// from the tile offsets of the G = images x tiles tiles (pool: a multiple of images, split_pool);
// split_view gives the kernels' view of it.
// n_isects_dev: nullptr, or the intersection count on the device (a bin captured in a CUDA graph, whose
// flatten_ids hold n_isects = capacity slots; the last tile ends at clamp(*n_isects_dev, 0, n_isects)).
cudaError_t launch_split_plan(const int32_t* tile_offsets, int64_t G, int64_t images, int64_t n_isects,
                              const int32_t* n_isects_dev, int64_t pool, int32_t* state, cudaStream_t stream);
Split split_view(int32_t* state, int64_t G, int64_t pool, int64_t D);
cudaError_t launch_render_fwd(const float* means2d, const float* conics, const float* opac2d, const float* colors,
                              const float* backgrounds, const int32_t* tile_offsets, const int32_t* flatten_ids,
                              int64_t n_isects, const int32_t* n_isects_dev, const Dims& d, const Split& sp,
                              float* out_colors, float* out_alphas, int32_t* last_ids, float* final_Ts,
                              cudaStream_t stream);
// Output gradients are read with strides (pixel p = (m*H + i)*W + j, channel c): v_colors_out[p * vc_pix
// + c * vc_ch], v_alphas_out[p * va_pix]; contiguous is (D, 1, 1), the expanded gradient of a sum (0, 0, 0).
struct GradStrides {
  int64_t vc_pix, vc_ch, va_pix;
};
// Zero four float buffers (p[b] of n[b] elements) in one launch: the render backward's gradients.
cudaError_t launch_zero4(float* const p[4], const int64_t n[4], cudaStream_t stream);
// Deterministic accumulation (torch.use_deterministic_algorithms(True)): the backward runs twice.
// Pass 1 adds the gradients with float atomics as usual and records, per gradient buffer (kind 0..3:
// means2d, conics, opacities, colours), the largest |warp sum| it added (float bits, atomicMax).
// Pass 2 adds every warp sum again as a 64-bit fixed-point integer, round(v * 2^(bits - e)) with
// max|v| < 2^e: integer addition is associative, so the totals do not depend on the order of the
// atomics. bits = 62 - ceil(log2(n)), n a bound on the terms that reach one element of the kind
// (det_fixed_bits): |each term| < 2^bits, so no sum of n terms overflows, and the resolution is
// 2^-bits of the kind's largest term (2^-49 at 512x512, one camera). The host scales the integers
// back (a kind whose largest term is not finite keeps pass 1's floats).
struct DetAccum {
  int pass;                    // 1 or 2 (the non-deterministic kernels ignore the struct)
  int* maxbits;                // [4] float bits of the largest |term| per kind (pass 1 writes, 2 reads)
  unsigned long long* fx[4];   // pass 2: fixed-point twins of v_means2d, v_conics, v_opac2d, v_colors
  int bits[4];                 // fraction bits per kind (det_fixed_bits)
};
// Terms per element: one per (tile, warp) of the image for each channel chunk (geometry: at most D
// chunks), and for colours shared by the C cameras of a scene (Cc == 1) one per camera as well.
inline void det_fixed_bits(const Dims& d, int bits[4]) {
  const int64_t per_image = (int64_t)d.tiles_x * d.tiles_y * (((int64_t)d.tile_size * d.tile_size + 31) / 32);
  const int64_t n_geo = per_image * (d.D > 1 ? d.D : 1);
  const int64_t n_col = per_image * (d.Cc == 1 ? d.C : 1);
  auto ceil_log2 = [](int64_t n) { int b = 0; while ((int64_t(1) << b) < n) ++b; return b; };
  bits[0] = bits[1] = bits[2] = 62 - ceil_log2(n_geo);
  bits[3] = 62 - ceil_log2(n_col);
}
// det: nullptr for the usual float atomics (order-dependent rounding), else one pass of the above.
cudaError_t launch_render_bwd(const float* means2d, const float* conics, const float* opac2d, const float* colors,
                              const float* backgrounds, const int32_t* tile_offsets, const int32_t* flatten_ids,
                              int64_t n_isects, const Dims& d, const Split& sp, const float* final_Ts,
                              const int32_t* last_ids, const float* v_colors_out, const float* v_alphas_out,
                              GradStrides gs, float* v_means2d, float* v_conics, float* v_opac2d, float* v_colors,
                              const DetAccum* det, cudaStream_t stream);
#endif

// Number of bits needed for values in [0, n): at least 1.
inline int bit_width(int64_t n) {
  int b = 1;
  while ((int64_t(1) << b) < n) ++b;
  return b;
}

}  // namespace rasterize
}  // namespace ffa
