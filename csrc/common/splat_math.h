// Gaussian splatting math shared by the CPU (C++) and CUDA rasterizer: EWA projection of one 3D
// Gaussian through a pinhole camera, gsplat 1.5.3 conventions (perspective Jacobian with the
// 1.3x-fov clamp, eps2d low-pass, Mip-Splatting compensation, opacity-aware per-axis radius,
// off-image culling), the tight ellipse/tile test, and the per-pixel alpha of one splat.
// No torch header: .cu files include this. Every function is templated on the scalar (float on
// CUDA, float or double on the CPU).
#pragma once
#include <math.h>
#include <stdint.h>

#include "common/macros.h"

namespace ffa {
namespace splat {

// ---- scalar helpers with float/double overloads usable on host and device -------------------
HOST_DEVICE float s_sqrt(float x) { return sqrtf(x); }
HOST_DEVICE double s_sqrt(double x) { return sqrt(x); }
HOST_DEVICE float s_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return expf(x);
#endif
}
HOST_DEVICE double s_exp(double x) { return exp(x); }
HOST_DEVICE float s_log(float x) { return logf(x); }
HOST_DEVICE double s_log(double x) { return log(x); }
HOST_DEVICE float s_ceil(float x) { return ceilf(x); }
HOST_DEVICE double s_ceil(double x) { return ceil(x); }
HOST_DEVICE float s_floor(float x) { return floorf(x); }
HOST_DEVICE double s_floor(double x) { return floor(x); }
// Multiply/add that the compiler may not fuse into an FMA: the tile test runs in two kernels
// (count, then emit) and must give bit-identical answers in both.
HOST_DEVICE float nc_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
HOST_DEVICE double nc_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
HOST_DEVICE float nc_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
HOST_DEVICE double nc_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
template <typename T>
HOST_DEVICE T s_min(T a, T b) { return a < b ? a : b; }
template <typename T>
HOST_DEVICE T s_max(T a, T b) { return a > b ? a : b; }
template <typename T>
HOST_DEVICE T s_clamp(T x, T lo, T hi) { return s_min(hi, s_max(lo, x)); }

// Constants of the blending rule (gsplat's): alpha below 1/255 is skipped, alpha is clamped at
// 0.999, a pixel stops before the splat that would take its transmittance to <= 1e-4.
constexpr float kAlphaThreshold = 1.0f / 255.0f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kTransmittanceEps = 1e-4f;
constexpr float kMaxExtent = 3.33f;

// Rotation matrix (row-major 3x3) of the quaternion q = (w, x, y, z), normalized here. A zero
// quaternion (also one that underflows to zero, e.g. with flush-to-zero) gives the identity.
template <typename T>
HOST_DEVICE void quat_to_rotmat(const T* q, T* R) {
  T n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  if (!(n2 > T(0))) {
    for (int k = 0; k < 9; ++k) R[k] = (k % 4 == 0) ? T(1) : T(0);
    return;
  }
  T inv = T(1) / s_sqrt(n2);
  T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  R[0] = T(1) - T(2) * (y * y + z * z);
  R[1] = T(2) * (x * y - w * z);
  R[2] = T(2) * (x * z + w * y);
  R[3] = T(2) * (x * y + w * z);
  R[4] = T(1) - T(2) * (x * x + z * z);
  R[5] = T(2) * (y * z - w * x);
  R[6] = T(2) * (x * z - w * y);
  R[7] = T(2) * (y * z + w * x);
  R[8] = T(1) - T(2) * (x * x + y * y);
}

// Camera-space covariance of R diag(s)^2 R^T seen through the rotation V (row-major 3x3 of the
// viewmat): C = (V R S)(V R S)^T, returned as the full 3x3 (row-major, symmetric).
template <typename T>
HOST_DEVICE void camera_covariance(const T* V, const T* R, const T* s, T* Cc) {
  T M[9];  // V R S
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k)
      M[i * 3 + k] = (V[i * 3 + 0] * R[0 * 3 + k] + V[i * 3 + 1] * R[1 * 3 + k] + V[i * 3 + 2] * R[2 * 3 + k]) * s[k];
  for (int i = 0; i < 3; ++i)
    for (int j = i; j < 3; ++j) {
      T v = M[i * 3 + 0] * M[j * 3 + 0] + M[i * 3 + 1] * M[j * 3 + 1] + M[i * 3 + 2] * M[j * 3 + 2];
      Cc[i * 3 + j] = v;
      Cc[j * 3 + i] = v;
    }
}

// Everything the forward projection produces for one (camera, Gaussian) pair.
template <typename T>
struct Projected {
  bool valid;
  T mean2d[2];
  T depth;
  T conic[3];  // inverse of the blurred 2D covariance: (a, b, c) = ((0,0), (0,1), (1,1))
  T opacity;   // opacity x compensation (antialiased) or opacity (classic)
  T compensation;
  int32_t radius[2];
};

// Perspective Jacobian rows (2x3, row-major) at camera-space point p, gsplat's clamp of x/z, y/z to
// the fov widened by 30%. Also returns the clamped ratios (needed by the backward).
template <typename T>
HOST_DEVICE void persp_jacobian(const T* p, T fx, T fy, T cx, T cy, int W, int H, T* J, T& ux, T& uy,
                                bool& clamped_x, bool& clamped_y) {
  T tan_fovx = T(0.5) * T(W) / fx, tan_fovy = T(0.5) * T(H) / fy;
  T lim_x_pos = (T(W) - cx) / fx + T(0.3) * tan_fovx;
  T lim_x_neg = cx / fx + T(0.3) * tan_fovx;
  T lim_y_pos = (T(H) - cy) / fy + T(0.3) * tan_fovy;
  T lim_y_neg = cy / fy + T(0.3) * tan_fovy;
  T rz = T(1) / p[2];
  T u = p[0] * rz, v = p[1] * rz;
  clamped_x = !(u <= lim_x_pos && u >= -lim_x_neg);
  clamped_y = !(v <= lim_y_pos && v >= -lim_y_neg);
  ux = s_min(lim_x_pos, s_max(-lim_x_neg, u));
  uy = s_min(lim_y_pos, s_max(-lim_y_neg, v));
  J[0] = fx * rz; J[1] = T(0); J[2] = -fx * ux * rz;
  J[3] = T(0); J[4] = fy * rz; J[5] = -fy * uy * rz;
}

// 2D covariance (a, b, c) = J Cc J^T for the 2x3 J and the symmetric 3x3 Cc.
template <typename T>
HOST_DEVICE void project_cov(const T* J, const T* Cc, T* cov2d) {
  T JC[6];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k)
      JC[r * 3 + k] = J[r * 3 + 0] * Cc[0 * 3 + k] + J[r * 3 + 1] * Cc[1 * 3 + k] + J[r * 3 + 2] * Cc[2 * 3 + k];
  cov2d[0] = JC[0] * J[0] + JC[1] * J[1] + JC[2] * J[2];
  cov2d[1] = JC[0] * J[3] + JC[1] * J[4] + JC[2] * J[5];
  cov2d[2] = JC[3] * J[3] + JC[4] * J[4] + JC[5] * J[5];
}

// EWA projection of one Gaussian (mean [3], quat [4] wxyz, scale [3], opacity) through one camera
// (viewmat [16] row-major world-to-camera, K [9] row-major) into a W x H image.
template <typename T>
HOST_DEVICE Projected<T> project_gaussian(const T* mean, const T* quat, const T* scale, T opacity,
                                          const T* viewmat, const T* K, int W, int H, T near_plane,
                                          T far_plane, T eps2d, bool antialiased) {
  Projected<T> out;
  out.valid = false;
  out.radius[0] = out.radius[1] = 0;
  out.mean2d[0] = out.mean2d[1] = T(0);
  out.depth = T(0);
  out.conic[0] = out.conic[1] = out.conic[2] = T(0);
  out.opacity = T(0);
  out.compensation = T(0);
  T V[9] = {viewmat[0], viewmat[1], viewmat[2], viewmat[4], viewmat[5], viewmat[6],
            viewmat[8], viewmat[9], viewmat[10]};
  T p[3];
  for (int i = 0; i < 3; ++i)
    p[i] = V[i * 3 + 0] * mean[0] + V[i * 3 + 1] * mean[1] + V[i * 3 + 2] * mean[2] + viewmat[i * 4 + 3];
  if (!(p[2] >= near_plane && p[2] <= far_plane)) return out;
  // Non-finite inputs are culled exactly where the reference twin culls them (its NaNs propagate
  // through torch.minimum / maximum and fail the det > 0 test; fmin / fmax here would drop them):
  // a NaN quaternion (quat_to_rotmat would make it the identity) ...
  T qn = quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3];
  if (qn != qn) return out;
  T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  // ... and intrinsics whose fov-clamp limits are NaN (0/0: fx = 0 with cx = 0, e.g. K = 0)
  {
    T tfx = T(0.5) * T(W) / fx, tfy = T(0.5) * T(H) / fy;
    T lim[4] = {(T(W) - cx) / fx + T(0.3) * tfx, cx / fx + T(0.3) * tfx,
                (T(H) - cy) / fy + T(0.3) * tfy, cy / fy + T(0.3) * tfy};
    for (int i = 0; i < 4; ++i)
      if (lim[i] != lim[i]) return out;
  }
  T R[9], Cc[9];
  quat_to_rotmat(quat, R);
  camera_covariance(V, R, scale, Cc);
  T J[6], ux, uy;
  bool clx, cly;
  persp_jacobian(p, fx, fy, cx, cy, W, H, J, ux, uy, clx, cly);
  T cov[3];
  project_cov(J, Cc, cov);
  T det_orig = cov[0] * cov[2] - cov[1] * cov[1];
  cov[0] += eps2d;
  cov[2] += eps2d;
  T det = cov[0] * cov[2] - cov[1] * cov[1];
  if (!(det > T(0))) return out;
  T comp = s_sqrt(s_max(T(0), det_orig / det));
  T op = antialiased ? opacity * comp : opacity;
  // opacity +inf (op - op is NaN): culled, as the reference twin does
  if (!(op >= T(kAlphaThreshold)) || !(op - op == T(0))) return out;
  T extent = s_min(T(kMaxExtent), s_sqrt(T(2) * s_log(op / T(kAlphaThreshold))));
  T rx = s_ceil(extent * s_sqrt(cov[0])), ry = s_ceil(extent * s_sqrt(cov[2]));
  if (!(rx > T(0) || ry > T(0))) return out;
  T mx = fx * p[0] / p[2] + cx, my = fy * p[1] / p[2] + cy;
  if (mx + rx <= T(0) || mx - rx >= T(W) || my + ry <= T(0) || my - ry >= T(H)) return out;
  if (!(rx < T(1e9) && ry < T(1e9))) return out;  // non-finite radius
  T inv_det = T(1) / det;
  out.valid = true;
  out.radius[0] = (int32_t)rx;
  out.radius[1] = (int32_t)ry;
  out.mean2d[0] = mx;
  out.mean2d[1] = my;
  out.depth = p[2];
  out.conic[0] = cov[2] * inv_det;
  out.conic[1] = -cov[1] * inv_det;
  out.conic[2] = cov[0] * inv_det;
  out.opacity = op;
  out.compensation = comp;
  return out;
}

// gsplat's tile box of a projected Gaussian: tiles [x0, x1) x [y0, y1) (may be empty).
template <typename T>
HOST_DEVICE void tile_box(T mx, T my, int32_t rx, int32_t ry, int tile_size, int tiles_x, int tiles_y,
                          int& x0, int& x1, int& y0, int& y1) {
  T ts = T(tile_size);
  T tx = mx / ts, ty = my / ts, trx = T(rx) / ts, try_ = T(ry) / ts;
  T fx0 = s_floor(tx - trx), fx1 = s_ceil(tx + trx), fy0 = s_floor(ty - try_), fy1 = s_ceil(ty + try_);
  x0 = (int)s_clamp(fx0, T(0), T(tiles_x));
  x1 = (int)s_clamp(fx1, T(0), T(tiles_x));
  y0 = (int)s_clamp(fy0, T(0), T(tiles_y));
  y1 = (int)s_clamp(fy1, T(0), T(tiles_y));
}

// Minimum over the rectangle [x0,x1] x [y0,y1] (offsets from the mean) of the quadratic form
// a x^2 + 2 b x y + c y^2 (positive definite). Exact: 0 if the mean is inside; else the minimum lies
// on an edge the mean is outside of (the form is convex with its minimum at the mean: from a point
// of any other edge, the segment to the mean enters the rectangle, where the form is lower), so at
// most two edges are looked at, the vertical one on the mean's side (x0 > 0: the mean is left of the
// rectangle; x1 < 0: right) and the horizontal one; each is a 1D convex quadratic, minimized by
// clamping its vertex.
template <typename T>
HOST_DEVICE T quadform_nc(T a, T b, T c, T x, T y) {
  // a x^2 + 2 b x y + c y^2 without contraction
  return nc_add(nc_add(nc_mul(nc_mul(a, x), x), nc_mul(nc_mul(nc_add(b, b), x), y)), nc_mul(nc_mul(c, y), y));
}

template <typename T>
HOST_DEVICE T rect_min_quadform(T a, T b, T c, T x0, T x1, T y0, T y1) {
  const bool in_x = x0 <= T(0) && x1 >= T(0), in_y = y0 <= T(0) && y1 >= T(0);
  const T X = x0 > T(0) ? x0 : x1, Y = y0 > T(0) ? y0 : y1;
  // Both edges are evaluated, then selected (no branches: the lanes of a warp disagree on which
  // edges count, so branches would run both anyway, with the divergence on top).
  const T qv = quadform_nc(a, b, c, X, s_clamp(-nc_mul(b, X) / c, y0, y1));
  const T qh = quadform_nc(a, b, c, s_clamp(-nc_mul(b, Y) / a, x0, x1), Y);
  const T none = T(1e30);
  return in_x && in_y ? T(0) : s_min(in_x ? none : qv, in_y ? none : qh);
}

// Tight test: can the splat reach alpha >= 1/255 at any pixel centre of tile (tx, ty)? Never false
// where gsplat's blending would use the splat (a small margin absorbs rounding).
template <typename T>
HOST_DEVICE bool tile_hit(T mx, T my, const T* conic, T sigma_max, int tx, int ty, int tile_size, int W, int H) {
  T px0 = T(tx * tile_size) + T(0.5), py0 = T(ty * tile_size) + T(0.5);
  int xe = (tx + 1) * tile_size < W ? (tx + 1) * tile_size : W;
  int ye = (ty + 1) * tile_size < H ? (ty + 1) * tile_size : H;
  T px1 = T(xe) - T(0.5), py1 = T(ye) - T(0.5);
  T q = rect_min_quadform(conic[0], conic[1], conic[2], px0 - mx, px1 - mx, py0 - my, py1 - my);
  return nc_mul(T(0.5), q) <= sigma_max;
}

// Largest sigma at which a splat of this (effective) opacity still reaches alpha >= 1/255, with a
// safety margin (tiles are only a superset; blending re-tests every pixel exactly).
template <typename T>
HOST_DEVICE T sigma_cutoff(T opacity) {
  return nc_add(nc_mul(s_log(nc_mul(opacity, T(255))), T(1.0001)), T(1e-3));
}

// Number of tiles the splat touches (tight test inside gsplat's box); the visitor version calls
// f(tile_index) in row-major tile order.
template <typename T, typename F>
HOST_DEVICE int for_each_tile(const Projected<T>& g, int tile_size, int tiles_x, int tiles_y, int W, int H, F f) {
  if (!g.valid) return 0;
  int x0, x1, y0, y1;
  tile_box(g.mean2d[0], g.mean2d[1], g.radius[0], g.radius[1], tile_size, tiles_x, tiles_y, x0, x1, y0, y1);
  T smax = sigma_cutoff(g.opacity);
  int n = 0;
  for (int ty = y0; ty < y1; ++ty)
    for (int tx = x0; tx < x1; ++tx)
      if (tile_hit(g.mean2d[0], g.mean2d[1], g.conic, smax, tx, ty, tile_size, W, H)) {
        f(ty * tiles_x + tx);
        ++n;
      }
  return n;
}

// gsplat's sigma (the quadratic form, halved) of the splat at pixel centre (px, py), and the offset
// (dx, dy) = mean2d - pixel. The one expression both tests below evaluate: a kernel that computes it
// once per (pixel, splat) and then calls sigma_far and sigma_alpha decides exactly as splat_far and
// splat_alpha do.
template <typename T>
HOST_DEVICE T splat_sigma(T mx, T my, T ca, T cb, T cc, T px, T py, T& dx, T& dy) {
  dx = mx - px;
  dy = my - py;
  return T(0.5) * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
}

// Cheap pre-test used before the exact alpha test: sigma is beyond cut = sigma_cutoff(opacity), so
// alpha < 1/255 for sure (the exact test still decides otherwise).
template <typename T>
HOST_DEVICE bool sigma_far(T sigma, T cut) { return sigma > cut; }

// gsplat's exact test from sigma: false when gsplat skips the splat (sigma < 0 or alpha < 1/255);
// otherwise vis = exp(-sigma) and alpha = min(0.999, opacity vis).
template <typename T>
HOST_DEVICE bool sigma_alpha(T sigma, T opacity, T& alpha, T& vis) {
  if (sigma < T(0)) return false;
  vis = s_exp(-sigma);
  alpha = s_min(T(kMaxAlpha), opacity * vis);
  return alpha >= T(kAlphaThreshold);
}

// splat_sigma + sigma_far, for loops that test at most once per (pixel, splat).
template <typename T>
HOST_DEVICE bool splat_far(T mx, T my, T ca, T cb, T cc, T cut, T px, T py) {
  T dx, dy;
  return sigma_far(splat_sigma(mx, my, ca, cb, cc, px, py, dx, dy), cut);
}

// Alpha of one splat at pixel centre (px, py): splat_sigma + sigma_alpha. Returns false when gsplat
// skips it (sigma < 0 or alpha < 1/255). vis = exp(-sigma) and the offset (dx, dy) = mean2d - pixel
// are returned for the backward.
template <typename T>
HOST_DEVICE bool splat_alpha(T mx, T my, T ca, T cb, T cc, T opacity, T px, T py, T& alpha, T& vis, T& dx,
                             T& dy) {
  return sigma_alpha(splat_sigma(mx, my, ca, cb, cc, px, py, dx, dy), opacity, alpha, vis);
}

}  // namespace splat
}  // namespace ffa
