// CPU implementation of skin_gaussians (+ backward): per-Gaussian math from csrc/common/lbs_math.h,
// at::parallel_for over Gaussians; scatters go to per-chunk buffers that are summed afterwards.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "flame_lbs/flame_lbs_checks.h"

namespace ffa {
namespace lbs {

std::tuple<at::Tensor, at::Tensor> skin_gaussians_cpu(const at::Tensor& v_posed, const at::Tensor& A,
                                                      const at::Tensor& W, const at::Tensor& idx,
                                                      const at::Tensor& aw, const c10::optional<at::Tensor>& offsets,
                                                      const c10::optional<at::Tensor>& quats, bool means_only,
                                                      bool /*pdl*/, const c10::optional<at::Tensor>& joint_weights) {
  auto z = check_gaussian_args(v_posed, A, W, idx, aw, offsets, quats, joint_weights);
  int64_t B = z.B, N = z.N, J = z.J, K = z.K, V = z.V;
  auto means = at::empty({B, N, 3}, v_posed.options());
  auto qout = at::empty({B, N, 4}, v_posed.options());
  if (B * N == 0) return {means, qout};
  AT_DISPATCH_FLOATING_TYPES(v_posed.scalar_type(), "skin_gaussians_cpu", [&] {
    using T = scalar_t;
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "skin_gaussians_cpu_idx", [&] {
      const T* vp = v_posed.data_ptr<T>();
      const T* Ap = A.data_ptr<T>();
      const T* Wp = W.data_ptr<T>();
      const index_t* ip = idx.data_ptr<index_t>();
      const T* awp = aw.data_ptr<T>();
      const T* off = offsets.has_value() ? offsets->data_ptr<T>() : nullptr;
      const T* qg = quats.has_value() ? quats->data_ptr<T>() : nullptr;
      const T* wgp = joint_weights.has_value() ? joint_weights->data_ptr<T>() : nullptr;
      T* mo = means.data_ptr<T>();
      T* qo = qout.data_ptr<T>();
      at::parallel_for(0, B * N, 256, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          int64_t b = i / N, n = i % N;
          const T* o = off ? off + (z.offsets_batched ? i : n) * 3 : nullptr;
          gaussian_forward((int)J, (int)K, ip + n * K, awp + n * K, vp + b * V * kVP, Wp, wgp ? wgp + n * J : nullptr,
                           Ap + b * J * 16, o, qg ? qg + n * 4 : nullptr, means_only, mo + i * 3, qo + i * 4);
        }
      });
    });
  });
  return {means, qout};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> skin_gaussians_backward_cpu(
    const c10::optional<at::Tensor>& grad_means, const c10::optional<at::Tensor>& grad_quats, const at::Tensor& v_posed,
    const at::Tensor& A, const at::Tensor& W, const at::Tensor& idx, const at::Tensor& aw,
    const c10::optional<at::Tensor>& offsets, const c10::optional<at::Tensor>& quats, bool means_only,
    bool need_W, bool need_aw, const c10::optional<at::Tensor>& joint_weights) {
  auto z = check_gaussian_args(v_posed, A, W, idx, aw, offsets, quats, joint_weights);
  int64_t B = z.B, N = z.N, J = z.J, K = z.K, V = z.V;
  auto opts = v_posed.options();
  auto gmean = grad_means.has_value() ? grad_means->contiguous() : at::zeros({B, N, 3}, opts);
  auto gq = grad_quats.has_value() ? grad_quats->contiguous() : at::zeros({B, N, 4}, opts);
  FFA_CHECK(gmean.sizes() == at::IntArrayRef({B, N, 3}), "grad_means: expected [B,N,3], got ", gmean.sizes());
  FFA_CHECK(gq.sizes() == at::IntArrayRef({B, N, 4}), "grad_quats: expected [B,N,4], got ", gq.sizes());
  int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (N + 2047) / 2048));
  auto part_vp = at::zeros({nchunks, B, V, kVP}, opts);  // pad column stays 0
  auto part_A = at::zeros({nchunks, B, J, 16}, opts);
  auto part_W = need_W ? at::zeros({nchunks, V, J}, opts) : at::empty({0}, opts);
  auto grad_aw = need_aw ? at::empty({N, K}, opts) : at::empty({0}, opts);
  auto grad_off = offsets.has_value() ? at::zeros_like(*offsets) : at::empty({0}, opts);
  auto grad_qg = quats.has_value() ? at::zeros_like(*quats) : at::empty({0}, opts);
  if (B * N > 0) {
    AT_DISPATCH_FLOATING_TYPES(v_posed.scalar_type(), "skin_gaussians_bwd_cpu", [&] {
      using T = scalar_t;
      AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "skin_gaussians_bwd_cpu_idx", [&] {
        const T* vp = v_posed.data_ptr<T>();
        const T* Ap = A.data_ptr<T>();
        const T* Wp = W.data_ptr<T>();
        const index_t* ip = idx.data_ptr<index_t>();
        const T* awp = aw.data_ptr<T>();
        const T* off = offsets.has_value() ? offsets->data_ptr<T>() : nullptr;
        const T* qg = quats.has_value() ? quats->data_ptr<T>() : nullptr;
        const T* wgp = joint_weights.has_value() ? joint_weights->data_ptr<T>() : nullptr;
        const T* gmp = gmean.data_ptr<T>();
        const T* gqp = gq.data_ptr<T>();
        T* pvp = part_vp.data_ptr<T>();
        T* pA = part_A.data_ptr<T>();
        T* pW = need_W ? part_W.data_ptr<T>() : nullptr;
        T* gaw = need_aw ? grad_aw.data_ptr<T>() : nullptr;
        T* goff = off ? grad_off.data_ptr<T>() : nullptr;
        T* gqg = qg ? grad_qg.data_ptr<T>() : nullptr;
        int64_t per = (N + nchunks - 1) / nchunks;
        at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
          std::vector<T> AgM(J);
          for (int64_t ch = c0; ch < c1; ++ch) {
            T* cvp = pvp + ch * B * V * kVP;
            T* cA = pA + ch * B * J * 16;
            T* cW = pW ? pW + ch * V * J : nullptr;
            for (int64_t n = ch * per; n < std::min(N, (ch + 1) * per); ++n) {
              const index_t* in = ip + n * K;
              const T* an = awp + n * K;
              T gaw_loc[4] = {0, 0, 0, 0};
              T gq_loc[4] = {0, 0, 0, 0};
              for (int64_t b = 0; b < B; ++b) {
                int64_t i = b * N + n;
                const T* o = off ? off + (z.offsets_batched ? i : n) * 3 : nullptr;
                const T* Ab = Ap + b * J * 16;
                const T* vpb = vp + b * V * kVP;
                T M[12], p[3], gM[12], gp[3];
                gaussian_backward((int)J, (int)K, in, an, vpb, Wp, wgp ? wgp + n * J : nullptr, Ab, o,
                                  qg ? qg + n * 4 : nullptr, means_only, gmp + i * 3, gqp + i * 4, M, p, gM, gp,
                                  gq_loc);
                for (int64_t j = 0; j < J; ++j) {
                  T s = 0;
                  for (int e = 0; e < 12; ++e) s += Ab[j * 16 + e] * gM[e];
                  AgM[j] = s;
                }
                for (int64_t k = 0; k < K; ++k) {
                  int64_t v = in[k];
                  const T* Wv = Wp + v * J;
                  T acc = vpb[v * kVP] * gp[0] + vpb[v * kVP + 1] * gp[1] + vpb[v * kVP + 2] * gp[2];
                  for (int c = 0; c < 3; ++c) cvp[(b * V + v) * kVP + c] += an[k] * gp[c];
                  for (int64_t j = 0; j < J; ++j) {
                    acc += Wv[j] * AgM[j];
                    T c = an[k] * Wv[j];
                    for (int e = 0; e < 12; ++e) cA[(b * J + j) * 16 + e] += c * gM[e];
                    if (cW) cW[v * J + j] += an[k] * AgM[j];
                  }
                  gaw_loc[k] += acc;
                }
                if (goff) {
                  T* g = goff + (z.offsets_batched ? i : n) * 3;
                  for (int c = 0; c < 3; ++c) g[c] += gp[c];
                }
              }
              if (gaw) for (int64_t k = 0; k < K; ++k) gaw[n * K + k] = gaw_loc[k];
              if (gqg) for (int k = 0; k < 4; ++k) gqg[n * 4 + k] = gq_loc[k];
            }
          }
        });
      });
    });
  }
  auto grad_vp = part_vp.sum(0);
  auto grad_A = part_A.sum(0).reshape({B, J, 4, 4});
  auto grad_W = need_W ? part_W.sum(0) : at::empty({0}, opts);
  return {grad_vp, grad_A, grad_W, grad_aw, grad_off, grad_qg};
}

}  // namespace lbs
}  // namespace ffa
