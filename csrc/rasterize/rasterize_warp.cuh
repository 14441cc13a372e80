// Warp-level helpers of the CUDA blending kernels (forward and backward): the pixel of each thread
// in its tile (warps cover compact 8x4 pixel blocks when tile_size % 8 == 0, rows otherwise), the
// rectangle of pixel centres a warp covers, and the exact per-warp culling test of one splat.
//
// Culling is exact in intent: a splat is skipped by a warp only when the minimum of its quadratic
// form over the warp's pixel-centre rectangle is beyond sigma_cutoff (the same test, cutoff and
// margin as the tight tile test), so its alpha is < 1/255 at every pixel of the warp and the
// per-pixel blending would skip it anyway. Anything not positive definite, NaN or otherwise odd is
// never culled (the per-pixel test decides as before).
#pragma once
#include <limits.h>

#include "common/splat_math.h"

namespace ffa {
namespace rasterize {

constexpr unsigned kFullMask = 0xffffffffu;

// Row li, column lj (inside the tile) of thread tid. tile_size % 8 == 0: warp w covers the 8x4
// block (w % (ts/8), w / (ts/8)) of the tile (ts*ts threads, a whole number of warps); otherwise
// row-major (threads past ts*ts get li >= ts, i.e. outside).
__device__ __forceinline__ void tile_pixel(int tid, int ts, int& li, int& lj) {
  if ((ts & 7) == 0) {
    const int w = tid >> 5, lane = tid & 31, bpr = ts >> 3;
    lj = (w % bpr) * 8 + (lane & 7);
    li = (w / bpr) * 4 + (lane >> 3);
  } else {
    li = tid / ts;
    lj = tid % ts;
  }
}

// Pixel-centre bounds of the warp's pixels that are inside the image (empty warps get an inverted
// rectangle; they never test anything since all their lanes are done).
struct WarpRect {
  float x0, x1, y0, y1;
};

__device__ __forceinline__ WarpRect warp_rect(bool inside, int i, int j) {
  const int xmin = __reduce_min_sync(kFullMask, inside ? j : INT_MAX);
  const int xmax = __reduce_max_sync(kFullMask, inside ? j : INT_MIN);
  const int ymin = __reduce_min_sync(kFullMask, inside ? i : INT_MAX);
  const int ymax = __reduce_max_sync(kFullMask, inside ? i : INT_MIN);
  WarpRect r;
  r.x0 = (float)xmin + 0.5f;
  r.x1 = (float)xmax + 0.5f;
  r.y0 = (float)ymin + 0.5f;
  r.y1 = (float)ymax + 0.5f;
  return r;
}

// The cutoff a blending kernel stages with a splat for warp_may_hit: sigma_cutoff(opacity), or +inf
// when the conic (a, b, c) is not positive definite or has a NaN (such a splat is never culled: the
// per-pixel test decides). Evaluated once per staged splat rather than once per warp.
__device__ __forceinline__ float staged_cutoff(float op, float a, float b, float c) {
  return a > 0.f && c > 0.f && a * c > b * b ? splat::sigma_cutoff<float>(op) : __int_as_float(0x7f800000);
}

// Can the splat (xyo = mean x, mean y, opacity, staged_cutoff; con = conic a, b, c) reach
// alpha >= 1/255 at some pixel centre of the rectangle? false only when it surely cannot.
__device__ __forceinline__ bool warp_may_hit(float4 xyo, float3 con, const WarpRect& r) {
  const float q = splat::rect_min_quadform<float>(con.x, con.y, con.z, r.x0 - xyo.x, r.x1 - xyo.x, r.y0 - xyo.y,
                                                  r.y1 - xyo.y);
  return !(splat::nc_mul(0.5f, q) > xyo.w);  // NaN anywhere, or an infinite cutoff: keep
}

}  // namespace rasterize
}  // namespace ffa
