// Math of FLAME/SMPL linear blend skinning shared by the CPU (C++) and CUDA backends: Rodrigues,
// the kinematic chain, blended transforms, Shepperd's matrix->quaternion, quaternion product, and
// their derivatives. No torch here. Layouts: rotation 3x3 row-major (9), transform 3x4 row-major
// with row stride 4 (the top of a 4x4; 12 or 16 values), quaternion wxyz.
// Conventions match ffavatar_kernels/reference/lbs.py (see its docstring).
#pragma once
#include <math.h>
#include <stdint.h>

#include "common/macros.h"

namespace ffa {
namespace lbs {

constexpr int kMaxJoints = 64;  // CUDA joint kernels keep per-joint state in shared memory
// Row stride of v_posed [B,V,kVP] (x, y, z, 0): 16-byte rows, so the CUDA Gaussian kernels gather
// an anchor vertex with one float4 load (and scatter its gradient with one float4 atomic on sm_90).
constexpr int kVP = 4;
constexpr double kQuatEps = 1e-12;
constexpr double kRadicandMin = 1e-30;

struct Parents {  // kinematic tree passed by value (parents[0] == -1, parents[j] < j)
  int32_t p[kMaxJoints];
};

template <typename T>
HOST_DEVICE T lbs_sqrt(T x) { return sqrt(x); }
template <>
HOST_DEVICE float lbs_sqrt<float>(float x) { return sqrtf(x); }

// ---- Rodrigues ---------------------------------------------------------------------------------
// R = I + a(s) K + b(s) K^2, s = |r|^2, a = sin θ/θ, b = (1-cos θ)/θ^2; da/ds, db/ds for backward.
template <typename T>
HOST_DEVICE void rodrigues_coeffs(T s, T& a, T& b, T& da, T& db) {
  if (s < T(0.25)) {
    a = T(1) - s / T(6) * (T(1) - s / T(20) * (T(1) - s / T(42) * (T(1) - s / T(72) * (T(1) - s / T(110)))));
    b = T(0.5) * (T(1) - s / T(12) * (T(1) - s / T(30) * (T(1) - s / T(56) * (T(1) - s / T(90) * (T(1) - s / T(132))))));
    // a' = -1/6 + 2s/5! - 3s^2/7! + 4s^3/9! - 5s^4/11!;  b' = -1/24 + 2s/6! - 3s^2/8! + 4s^3/10! - 5s^4/12!
    da = T(-1.0 / 6) + s * (T(2.0 / 120) + s * (T(-3.0 / 5040) + s * (T(4.0 / 362880) + s * T(-5.0 / 39916800))));
    db = T(-1.0 / 24) + s * (T(2.0 / 720) + s * (T(-3.0 / 40320) + s * (T(4.0 / 3628800) + s * T(-5.0 / 479001600))));
  } else {
    T th = lbs_sqrt(s);
    T sn = sin(th), cs = cos(th);
    a = sn / th;
    b = (T(1) - cs) / s;
    da = (th * cs - sn) / (T(2) * s * th);
    db = (th * sn - T(2) * (T(1) - cs)) / (T(2) * s * s);
  }
}

template <typename T>
HOST_DEVICE void rodrigues(const T* r, T* R) {
  T x = r[0], y = r[1], z = r[2];
  T s = x * x + y * y + z * z, a, b, da, db;
  rodrigues_coeffs(s, a, b, da, db);
  // K^2 = r r^T - s I
  R[0] = T(1) + b * (x * x - s); R[1] = -a * z + b * x * y;     R[2] = a * y + b * x * z;
  R[3] = a * z + b * y * x;      R[4] = T(1) + b * (y * y - s); R[5] = -a * x + b * y * z;
  R[6] = -a * y + b * z * x;     R[7] = a * x + b * z * y;     R[8] = T(1) + b * (z * z - s);
}

// gr = dL/dr given G = dL/dR (both for one joint).
template <typename T>
HOST_DEVICE void rodrigues_backward(const T* r, const T* G, T* gr) {
  T x = r[0], y = r[1], z = r[2];
  T s = x * x + y * y + z * z, a, b, da, db;
  rodrigues_coeffs(s, a, b, da, db);
  T kx = G[7] - G[5], ky = G[2] - G[6], kz = G[3] - G[1];  // <G, K(e_i)>
  T gk = x * kx + y * ky + z * kz;                            // <G, K>
  T trG = G[0] + G[4] + G[8];
  T rr[3] = {x, y, z};
  T GK2 = -s * trG;  // <G, r r^T - s I>
  T Gs[3];           // (G + G^T) r
  for (int i = 0; i < 3; ++i) {
    Gs[i] = T(0);
    for (int k = 0; k < 3; ++k) {
      Gs[i] += (G[i * 3 + k] + G[k * 3 + i]) * rr[k];
      GK2 += G[i * 3 + k] * rr[i] * rr[k];
    }
  }
  T kk[3] = {kx, ky, kz};
  for (int i = 0; i < 3; ++i) {
    gr[i] = a * kk[i] + b * (Gs[i] - T(2) * trG * rr[i]) + T(2) * rr[i] * (da * gk + db * GK2);
  }
}

// ---- kinematic chain ---------------------------------------------------------------------------
// For one frame. rot [J*9], rest [J*3] (rest-pose joints) -> G [J*12] (global 3x4), joints [J*3]
// (posed joints = G translation), A [J*16] (relative 4x4: [Rg, tg - Rg rest]).
template <typename T>
HOST_DEVICE void chain_forward(int J, const Parents& par, const T* rot, const T* rest, T* G, T* joints,
                               T* A) {
  for (int j = 0; j < J; ++j) {
    int p = par.p[j];
    const T* R = rot + j * 9;
    T* Gj = G + j * 12;
    T rel[3];
    for (int c = 0; c < 3; ++c) rel[c] = rest[j * 3 + c] - (p >= 0 ? rest[p * 3 + c] : T(0));
    if (p < 0) {
      for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) Gj[r * 4 + c] = R[r * 3 + c];
        Gj[r * 4 + 3] = rel[r];
      }
    } else {
      const T* Gp = G + p * 12;
      for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c)
          Gj[r * 4 + c] = Gp[r * 4 + 0] * R[c] + Gp[r * 4 + 1] * R[3 + c] + Gp[r * 4 + 2] * R[6 + c];
        Gj[r * 4 + 3] = Gp[r * 4 + 0] * rel[0] + Gp[r * 4 + 1] * rel[1] + Gp[r * 4 + 2] * rel[2] + Gp[r * 4 + 3];
      }
    }
    T* Aj = A + j * 16;
    for (int r = 0; r < 3; ++r) {
      joints[j * 3 + r] = Gj[r * 4 + 3];
      for (int c = 0; c < 3; ++c) Aj[r * 4 + c] = Gj[r * 4 + c];
      Aj[r * 4 + 3] = Gj[r * 4 + 3] - (Gj[r * 4 + 0] * rest[j * 3] + Gj[r * 4 + 1] * rest[j * 3 + 1] +
                                       Gj[r * 4 + 2] * rest[j * 3 + 2]);
    }
    Aj[12] = T(0); Aj[13] = T(0); Aj[14] = T(0); Aj[15] = T(1);
  }
}

// Backward of chain_forward for one frame. gA [J*16] (rows 0..2 used), gjoints [J*3];
// G from chain_forward; gG [J*12] scratch. Writes grot [J*9] and grest [J*3] (overwritten).
template <typename T>
HOST_DEVICE void chain_backward(int J, const Parents& par, const T* rot, const T* rest, const T* G,
                                const T* gA, const T* gjoints, T* gG, T* grot, T* grest) {
  // dL/dG from A and joints
  for (int j = 0; j < J; ++j) {
    const T* gAj = gA + j * 16;
    for (int r = 0; r < 3; ++r) {
      T gt = gAj[r * 4 + 3];
      for (int c = 0; c < 3; ++c) gG[j * 12 + r * 4 + c] = gAj[r * 4 + c] - gt * rest[j * 3 + c];
      gG[j * 12 + r * 4 + 3] = gt + gjoints[j * 3 + r];
    }
    for (int c = 0; c < 3; ++c) {  // rest_j enters A_j: -Rg^T gt
      grest[j * 3 + c] = -(G[j * 12 + 0 * 4 + c] * gAj[3] + G[j * 12 + 1 * 4 + c] * gAj[7] +
                           G[j * 12 + 2 * 4 + c] * gAj[11]);
    }
  }
  for (int j = J - 1; j >= 0; --j) {
    int p = par.p[j];
    const T* R = rot + j * 9;
    T* g = gG + j * 12;
    T* gR = grot + j * 9;
    T grel[3];
    if (p < 0) {
      for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) gR[r * 3 + c] = g[r * 4 + c];
        grel[r] = g[r * 4 + 3];
      }
    } else {
      const T* Gp = G + p * 12;
      T* gp = gG + p * 12;
      T rel[3];
      for (int c = 0; c < 3; ++c) rel[c] = rest[j * 3 + c] - rest[p * 3 + c];
      // Rg_j = Rg_p R ; tg_j = Rg_p rel + tg_p
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) {
          gR[r * 3 + c] = Gp[0 * 4 + r] * g[0 * 4 + c] + Gp[1 * 4 + r] * g[1 * 4 + c] + Gp[2 * 4 + r] * g[2 * 4 + c];
          gp[r * 4 + c] += g[r * 4 + 0] * R[c * 3 + 0] + g[r * 4 + 1] * R[c * 3 + 1] + g[r * 4 + 2] * R[c * 3 + 2] +
                           g[r * 4 + 3] * rel[c];
        }
      for (int r = 0; r < 3; ++r) {
        grel[r] = Gp[0 * 4 + r] * g[3] + Gp[1 * 4 + r] * g[7] + Gp[2 * 4 + r] * g[11];
        gp[r * 4 + 3] += g[r * 4 + 3];
      }
      for (int c = 0; c < 3; ++c) grest[p * 3 + c] -= grel[c];
    }
    for (int c = 0; c < 3; ++c) grest[j * 3 + c] += grel[c];
  }
}

// ---- blended transforms ------------------------------------------------------------------------
// M [12] = sum_j w[j] A[j*16 + 0..11]
template <typename T>
HOST_DEVICE void blend_transform(int J, const T* w, const T* A, T* M) {
  for (int i = 0; i < 12; ++i) M[i] = T(0);
  for (int j = 0; j < J; ++j) {
    T wj = w[j];
    for (int i = 0; i < 12; ++i) M[i] += wj * A[j * 16 + i];
  }
}

template <typename T>
HOST_DEVICE void apply_transform(const T* M, const T* p, T* out) {
  for (int r = 0; r < 3; ++r) out[r] = M[r * 4] * p[0] + M[r * 4 + 1] * p[1] + M[r * 4 + 2] * p[2] + M[r * 4 + 3];
}

// gM [12] = g ⊗ [p, 1] (overwritten), gp [3] = M[:3,:3]^T g (overwritten)
template <typename T>
HOST_DEVICE void apply_transform_backward(const T* M, const T* p, const T* g, T* gM, T* gp) {
  for (int r = 0; r < 3; ++r) {
    gM[r * 4 + 0] = g[r] * p[0]; gM[r * 4 + 1] = g[r] * p[1]; gM[r * 4 + 2] = g[r] * p[2]; gM[r * 4 + 3] = g[r];
  }
  for (int c = 0; c < 3; ++c) gp[c] = M[c] * g[0] + M[4 + c] * g[1] + M[8 + c] * g[2];
}

// ---- quaternions -------------------------------------------------------------------------------
// Shepperd: branch = argmax(trace, m00, m11, m22) (first on ties); component `branch` of the
// unnormalized q is s/4 with s = 2 sqrt(t); the others are pair sums / s. M has row stride 4.
HOST_DEVICE void shepperd_pair(int a, int b, int& ia, int& ib, int& sg) {
  // (w,x)=m21-m12 (w,y)=m02-m20 (w,z)=m10-m01 (x,y)=m01+m10 (x,z)=m02+m20 (y,z)=m12+m21; a < b
  int code = a * 4 + b;
  switch (code) {
    case 1: ia = 9; ib = 6; sg = -1; break;
    case 2: ia = 2; ib = 8; sg = -1; break;
    case 3: ia = 4; ib = 1; sg = -1; break;
    case 6: ia = 1; ib = 4; sg = 1; break;
    case 7: ia = 2; ib = 8; sg = 1; break;
    default: ia = 6; ib = 9; sg = 1; break;  // 11
  }
}

template <typename T>
HOST_DEVICE int shepperd_branch(const T* M) {
  T d0 = M[0], d1 = M[5], d2 = M[10];
  T best = d0 + d1 + d2;
  int br = 0;
  if (d0 > best) { best = d0; br = 1; }
  if (d1 > best) { best = d1; br = 2; }
  if (d2 > best) { br = 3; }
  return br;
}

template <typename T>
HOST_DEVICE T shepperd_radicand(const T* M, int br) {
  T d[3] = {M[0], M[5], M[10]};
  T t = T(1);
  for (int i = 0; i < 3; ++i) t += (br == 0 || br == i + 1) ? d[i] : -d[i];
  return t < T(kRadicandMin) ? T(kRadicandMin) : t;
}

template <typename T>
HOST_DEVICE void shepperd(const T* M, int br, T* q) {
  T s = T(2) * lbs_sqrt(shepperd_radicand(M, br));
  for (int k = 0; k < 4; ++k) {
    if (k == br) { q[k] = s * T(0.25); continue; }
    int ia, ib, sg;
    shepperd_pair(k < br ? k : br, k < br ? br : k, ia, ib, sg);
    q[k] = (M[ia] + T(sg) * M[ib]) / s;
  }
}

// gM (row stride 4) += d<gq, q(M)>/dM for the unnormalized Shepperd q.
template <typename T>
HOST_DEVICE void shepperd_backward(const T* M, int br, const T* gq, T* gM) {
  T traw = T(1);
  T d[3] = {M[0], M[5], M[10]};
  for (int i = 0; i < 3; ++i) traw += (br == 0 || br == i + 1) ? d[i] : -d[i];
  T t = traw < T(kRadicandMin) ? T(kRadicandMin) : traw;
  T s = T(2) * lbs_sqrt(t);
  T gs = gq[br] * T(0.25);
  for (int k = 0; k < 4; ++k) {
    if (k == br) continue;
    int ia, ib, sg;
    shepperd_pair(k < br ? k : br, k < br ? br : k, ia, ib, sg);
    T n = M[ia] + T(sg) * M[ib];
    gs -= gq[k] * n / (s * s);
    T gn = gq[k] / s;
    gM[ia] += gn;
    gM[ib] += T(sg) * gn;
  }
  if (traw >= T(kRadicandMin)) {
    T gt = gs * T(2) / s;  // ds/dt = 1/sqrt(t) = 2/s
    gM[0] += (br == 0 || br == 1) ? gt : -gt;
    gM[5] += (br == 0 || br == 2) ? gt : -gt;
    gM[10] += (br == 0 || br == 3) ? gt : -gt;
  }
}

template <typename T>
HOST_DEVICE T quat_norm_clamped(const T* q) {
  T n = lbs_sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  return n < T(kQuatEps) ? T(kQuatEps) : n;
}

// go = d/dq of <g, q / max(|q|, eps)>
template <typename T>
HOST_DEVICE void quat_normalize_backward(const T* q, const T* g, T* go) {
  T nraw = lbs_sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  if (nraw < T(kQuatEps)) {
    for (int k = 0; k < 4; ++k) go[k] = g[k] / T(kQuatEps);
    return;
  }
  T dot = (q[0] * g[0] + q[1] * g[1] + q[2] * g[2] + q[3] * g[3]) / (nraw * nraw);
  for (int k = 0; k < 4; ++k) go[k] = (g[k] - q[k] * dot) / nraw;
}

// Unit quaternion (w >= 0) of the 3x3 part of M (row stride 4).
template <typename T>
HOST_DEVICE void matrix_to_quat(const T* M, T* q) {
  int br = shepperd_branch(M);
  shepperd(M, br, q);
  T n = quat_norm_clamped(q);
  T sg = q[0] < T(0) ? T(-1) : T(1);
  for (int k = 0; k < 4; ++k) q[k] = sg * q[k] / n;
}

// gM (row stride 4, 3x3 part) += d<g, matrix_to_quat(M)>/dM
template <typename T>
HOST_DEVICE void matrix_to_quat_backward(const T* M, const T* g, T* gM) {
  int br = shepperd_branch(M);
  T q[4], gu[4], gn[4];
  shepperd(M, br, q);
  T sg = q[0] < T(0) ? T(-1) : T(1);
  for (int k = 0; k < 4; ++k) gn[k] = sg * g[k];
  quat_normalize_backward(q, gn, gu);
  shepperd_backward(M, br, gu, gM);
}

template <typename T>
HOST_DEVICE void quat_mul(const T* p, const T* q, T* r) {
  r[0] = p[0] * q[0] - p[1] * q[1] - p[2] * q[2] - p[3] * q[3];
  r[1] = p[0] * q[1] + p[1] * q[0] + p[2] * q[3] - p[3] * q[2];
  r[2] = p[0] * q[2] - p[1] * q[3] + p[2] * q[0] + p[3] * q[1];
  r[3] = p[0] * q[3] + p[1] * q[2] - p[2] * q[1] + p[3] * q[0];
}

// r = p ⊗ q: gp = g ⊗ conj(q), gq = conj(p) ⊗ g
template <typename T>
HOST_DEVICE void quat_mul_backward(const T* p, const T* q, const T* g, T* gp, T* gq) {
  T qc[4] = {q[0], -q[1], -q[2], -q[3]};
  T pc[4] = {p[0], -p[1], -p[2], -p[3]};
  quat_mul(g, qc, gp);
  quat_mul(pc, g, gq);
}

// ---- one anchored Gaussian, one frame -------------------------------------------------------------
// Anchored rest point: p = sum_k w_k vp[i_k] + off (off may be null; vp rows of kVP).
template <typename T, typename I>
HOST_DEVICE void anchor_point(int K, const I* idx, const T* aw, const T* vp, const T* off, T* p) {
  for (int c = 0; c < 3; ++c) p[c] = off ? off[c] : T(0);
  for (int k = 0; k < K; ++k) {
    const T* v = vp + (int64_t)idx[k] * kVP;
    for (int c = 0; c < 3; ++c) p[c] += aw[k] * v[c];
  }
}

// Canonical quaternion (normalized; identity if qg is null).
template <typename T>
HOST_DEVICE void canonical_quat(const T* qg, T* q) {
  if (!qg) { q[0] = T(1); q[1] = q[2] = q[3] = T(0); return; }
  T n = quat_norm_clamped(qg);
  for (int k = 0; k < 4; ++k) q[k] = qg[k] / n;
}

// Frame-independent joint weights of a Gaussian: wg [J] = sum_k w_k W[i_k, :]. Its blended
// transform in any frame is then blend_transform(J, wg, A_frame) (J*12 FMAs instead of K*J*12).
// wg_in: the same weights precomputed by the caller ([J] row of skin_gaussians' joint_weights), or
// null to compute them here.
template <typename T, typename I>
HOST_DEVICE void anchor_joint_weights(int J, int K, const I* idx, const T* aw, const T* W, T* wg,
                                      const T* wg_in = nullptr) {
  if (wg_in) {
    for (int j = 0; j < J; ++j) wg[j] = wg_in[j];
    return;
  }
  for (int j = 0; j < J; ++j) wg[j] = T(0);
  for (int k = 0; k < K; ++k) {
    const T* Wk = W + (int64_t)idx[k] * J;
    for (int j = 0; j < J; ++j) wg[j] += aw[k] * Wk[j];
  }
}

// Posed mean and rotation of a Gaussian from its blended transform M [12], anchored rest point p [3]
// and normalized canonical quaternion qc [4].
template <typename T>
HOST_DEVICE void gaussian_pose(const T* M, const T* p, const T* qc, bool means_only, T* mean, T* qout) {
  apply_transform(M, p, mean);
  if (means_only) {
    for (int k = 0; k < 4; ++k) qout[k] = qc[k];
  } else {
    T qm[4];
    matrix_to_quat(M, qm);
    quat_mul(qm, qc, qout);
  }
}

template <typename T, typename I>
HOST_DEVICE void gaussian_forward(int J, int K, const I* idx, const T* aw, const T* vp, const T* W, const T* wg_in,
                                  const T* A, const T* off, const T* qg, bool means_only, T* mean, T* qout) {
  T wg[kMaxJoints], M[12], p[3], qc[4];
  anchor_joint_weights(J, K, idx, aw, W, wg, wg_in);
  blend_transform(J, wg, A, M);
  anchor_point(K, idx, aw, vp, off, p);
  canonical_quat(qg, qc);
  gaussian_pose(M, p, qc, means_only, mean, qout);
}

// Backward of gaussian_pose for one frame: gM [12] (dL/d blended transform) and gp [3] (dL/d anchored
// rest point = dL/d offset) are overwritten; gqc [4] (dL/d normalized canonical quaternion) is
// accumulated (+=), so a caller can sum it over frames and apply quat_normalize_backward once.
template <typename T>
HOST_DEVICE void gaussian_pose_backward(const T* M, const T* p, const T* qc, bool means_only, const T* gmean,
                                        const T* gq, T* gM, T* gp, T* gqc) {
  apply_transform_backward(M, p, gmean, gM, gp);
  if (means_only) {
    for (int k = 0; k < 4; ++k) gqc[k] += gq[k];
  } else {
    T qm[4], gqm[4], t[4];
    matrix_to_quat(M, qm);
    quat_mul_backward(qm, qc, gq, gqm, t);
    for (int k = 0; k < 4; ++k) gqc[k] += t[k];
    matrix_to_quat_backward(M, gqm, gM);
  }
}

// Backward for one Gaussian and frame (the CPU path). Outputs (overwritten): gM [12], gp [3], M [12],
// p [3]; gqg [4] accumulated (+=, if qg). M is recomputed as the forward does (anchor_joint_weights
// then blend_transform, same order). The caller scatters: gA_j += Wu_j gM, gvp[i_k] += w_k gp,
// gW[i_k,j] += w_k <A_j, gM>, gaw_k += <vp[i_k], gp> + sum_j W[i_k,j] <A_j, gM>.
template <typename T, typename I>
HOST_DEVICE void gaussian_backward(int J, int K, const I* idx, const T* aw, const T* vp, const T* W,
                                   const T* wg_in, const T* A, const T* off, const T* qg, bool means_only,
                                   const T* gmean, const T* gq, T* M, T* p, T* gM, T* gp, T* gqg) {
  T wg[kMaxJoints], qc[4], gqc[4] = {T(0), T(0), T(0), T(0)};
  anchor_joint_weights(J, K, idx, aw, W, wg, wg_in);
  blend_transform(J, wg, A, M);
  anchor_point(K, idx, aw, vp, off, p);
  canonical_quat(qg, qc);
  gaussian_pose_backward(M, p, qc, means_only, gmean, gq, gM, gp, gqc);
  if (qg) {
    T t[4];
    quat_normalize_backward(qg, gqc, t);
    for (int k = 0; k < 4; ++k) gqg[k] += t[k];
  }
}

}  // namespace lbs
}  // namespace ffa
