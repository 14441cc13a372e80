// Derivatives (vector-Jacobian products) of the splatting math in splat_math.h, shared by the CPU
// and CUDA backward passes. No torch header.
#pragma once
#include "common/splat_math.h"

namespace ffa {
namespace splat {

// VJP of the normalized-quaternion rotation: G = dL/dR (row-major 3x3) -> dL/dq for the raw
// (unnormalized) q, added to v_q.
template <typename T>
HOST_DEVICE void quat_to_rotmat_vjp(const T* q, const T* G, T* v_q) {
  T n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  if (!(n2 > T(0))) return;  // degenerate: the forward used the identity
  T inv = T(1) / s_sqrt(n2);
  T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
  T vw = T(2) * (x * (G[7] - G[5]) + y * (G[2] - G[6]) + z * (G[3] - G[1]));
  T vx = T(2) * (y * (G[1] + G[3]) + z * (G[2] + G[6]) + w * (G[7] - G[5]) - T(2) * x * (G[4] + G[8]));
  T vy = T(2) * (x * (G[1] + G[3]) + z * (G[5] + G[7]) + w * (G[2] - G[6]) - T(2) * y * (G[0] + G[8]));
  T vz = T(2) * (x * (G[2] + G[6]) + y * (G[5] + G[7]) + w * (G[3] - G[1]) - T(2) * z * (G[0] + G[4]));
  // normalization: v_q = (v_qn - qn (qn . v_qn)) / |q|
  T d = w * vw + x * vx + y * vy + z * vz;
  v_q[0] += (vw - w * d) * inv;
  v_q[1] += (vx - x * d) * inv;
  v_q[2] += (vy - y * d) * inv;
  v_q[3] += (vz - z * d) * inv;
}

// Backward of project_gaussian for a pair that was valid in the forward. Upstream gradients:
// v_mean2d [2], v_depth, v_conic [3] (a, b, c as stored), v_opac (of opacity x compensation).
// Accumulates into v_mean [3], v_quat [4], v_scale [3], v_opacity [1].
template <typename T>
HOST_DEVICE void project_gaussian_vjp(const T* mean, const T* quat, const T* scale, T opacity, const T* viewmat,
                                      const T* K, int W, int H, T eps2d, bool antialiased, const T* v_mean2d,
                                      T v_depth, const T* v_conic, T v_opac, T* v_mean, T* v_quat, T* v_scale,
                                      T* v_opacity) {
  T V[9] = {viewmat[0], viewmat[1], viewmat[2], viewmat[4], viewmat[5], viewmat[6],
            viewmat[8], viewmat[9], viewmat[10]};
  T p[3];
  for (int i = 0; i < 3; ++i)
    p[i] = V[i * 3 + 0] * mean[0] + V[i * 3 + 1] * mean[1] + V[i * 3 + 2] * mean[2] + viewmat[i * 4 + 3];
  T R[9], Cc[9];
  quat_to_rotmat(quat, R);
  camera_covariance(V, R, scale, Cc);
  T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  T J[6], ux, uy;
  bool clx, cly;
  persp_jacobian(p, fx, fy, cx, cy, W, H, J, ux, uy, clx, cly);
  T cov[3];
  project_cov(J, Cc, cov);
  T det_orig = cov[0] * cov[2] - cov[1] * cov[1];
  T A = cov[0] + eps2d, B = cov[1], Cm = cov[2] + eps2d;
  T det = A * Cm - B * B;
  T inv_det = T(1) / det;
  T ci[3] = {Cm * inv_det, -B * inv_det, A * inv_det};  // conic

  // opacity x compensation
  T G[4];  // dL/d cov2d as a full symmetric 2x2 (row-major)
  T v_comp = T(0);
  if (antialiased) {
    T ratio = det_orig / det;
    T comp = ratio > T(0) ? s_sqrt(ratio) : T(0);
    v_opacity[0] += v_opac * comp;
    v_comp = v_opac * opacity;
    if (!(comp > T(0))) v_comp = T(0);
  } else {
    v_opacity[0] += v_opac;
  }
  // conic = inverse(cov_blur): G = -Ci Vc Ci, Vc = [[va, vb/2], [vb/2, vc]]
  {
    T va = v_conic[0], vb = T(0.5) * v_conic[1], vc = v_conic[2];
    // X = Ci Vc
    T x00 = ci[0] * va + ci[1] * vb, x01 = ci[0] * vb + ci[1] * vc;
    T x10 = ci[1] * va + ci[2] * vb, x11 = ci[1] * vb + ci[2] * vc;
    G[0] = -(x00 * ci[0] + x01 * ci[1]);
    G[1] = -(x00 * ci[1] + x01 * ci[2]);
    G[2] = -(x10 * ci[0] + x11 * ci[1]);
    G[3] = -(x10 * ci[1] + x11 * ci[2]);
  }
  if (v_comp != T(0)) {
    // comp = sqrt(det_o / det_b); d det(M)/dM = adj(M)
    T comp = s_sqrt(det_orig / det);
    T s = v_comp / (T(2) * comp) * inv_det * inv_det;
    // adj(cov) * det_b - det_o * adj(cov_blur)
    G[0] += s * ((Cm - eps2d) * det - det_orig * Cm);
    G[1] += s * (-B * det + det_orig * B);
    G[2] += s * (-B * det + det_orig * B);
    G[3] += s * ((A - eps2d) * det - det_orig * A);
  }
  // cov2d = J Cc J^T: v_Cc = J^T G J, v_J = 2 G J Cc
  T GJ[6];  // G J (2x3)
  for (int k = 0; k < 3; ++k) {
    GJ[0 * 3 + k] = G[0] * J[0 * 3 + k] + G[1] * J[1 * 3 + k];
    GJ[1 * 3 + k] = G[2] * J[0 * 3 + k] + G[3] * J[1 * 3 + k];
  }
  T vCc[9];
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) vCc[i * 3 + k] = J[0 * 3 + i] * GJ[0 * 3 + k] + J[1 * 3 + i] * GJ[1 * 3 + k];
  T vJ[6];
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 3; ++k)
      vJ[r * 3 + k] = T(2) * (GJ[r * 3 + 0] * Cc[0 * 3 + k] + GJ[r * 3 + 1] * Cc[1 * 3 + k] + GJ[r * 3 + 2] * Cc[2 * 3 + k]);

  // camera-space point
  T rz = T(1) / p[2], rz2 = rz * rz;
  T vp[3];
  vp[0] = fx * rz * v_mean2d[0];
  vp[1] = fy * rz * v_mean2d[1];
  vp[2] = -(fx * p[0] * v_mean2d[0] + fy * p[1] * v_mean2d[1]) * rz2 + v_depth;
  vp[2] += -fx * rz2 * vJ[0] - fy * rz2 * vJ[4];
  if (clx) {
    vp[2] += fx * ux * rz2 * vJ[2];
  } else {
    vp[0] += -fx * rz2 * vJ[2];
    vp[2] += T(2) * fx * ux * rz2 * vJ[2];
  }
  if (cly) {
    vp[2] += fy * uy * rz2 * vJ[5];
  } else {
    vp[1] += -fy * rz2 * vJ[5];
    vp[2] += T(2) * fy * uy * rz2 * vJ[5];
  }
  for (int j = 0; j < 3; ++j) v_mean[j] += V[0 * 3 + j] * vp[0] + V[1 * 3 + j] * vp[1] + V[2 * 3 + j] * vp[2];

  // Cc = V Sigma V^T: v_Sigma = V^T vCc V
  T tmp[9], vS[9];
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k)
      tmp[i * 3 + k] = V[0 * 3 + i] * vCc[0 * 3 + k] + V[1 * 3 + i] * vCc[1 * 3 + k] + V[2 * 3 + i] * vCc[2 * 3 + k];
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k)
      vS[i * 3 + k] = tmp[i * 3 + 0] * V[0 * 3 + k] + tmp[i * 3 + 1] * V[1 * 3 + k] + tmp[i * 3 + 2] * V[2 * 3 + k];
  // Sigma = M M^T, M = R diag(s): v_M = (vS + vS^T) M; v_R = v_M diag(s); v_s = colsum(v_M * R)
  T GR[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      T vm = T(0);
      for (int k = 0; k < 3; ++k) vm += (vS[i * 3 + k] + vS[k * 3 + i]) * R[k * 3 + j] * scale[j];
      GR[i * 3 + j] = vm * scale[j];
      v_scale[j] += vm * R[i * 3 + j];
    }
  quat_to_rotmat_vjp(quat, GR, v_quat);
}

}  // namespace splat
}  // namespace ffa
