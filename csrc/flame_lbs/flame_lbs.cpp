// CPU implementation of flame_lbs_joints, flame_lbs (+ backwards) and the CPU registrations of all
// flame_lbs / skin_gaussians ops. Per-joint / per-vertex math: csrc/common/lbs_math.h (shared with
// CUDA); the dense blendshape contractions use ATen matmuls (BLAS) on the CPU.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "flame_lbs/flame_lbs_checks.h"

namespace ffa {
namespace lbs {
namespace {

// rest joints [B,J,3] = J_template + J_dirs . betas
at::Tensor rest_joints(const at::Tensor& betas, const at::Tensor& J_template, const at::Tensor& J_dirs) {
  int64_t B = betas.size(0), J = J_template.size(0), S = betas.size(1);
  return (at::matmul(betas, J_dirs.reshape({J * 3, S}).t()) + J_template.reshape({1, J * 3})).reshape({B, J, 3});
}

at::Tensor rot_from_pose(const at::Tensor& pose, bool is_matrix) {
  if (is_matrix) return pose.contiguous();
  auto rot = at::empty({pose.size(0), pose.size(1), 3, 3}, pose.options());
  int64_t n = pose.size(0) * pose.size(1);
  AT_DISPATCH_FLOATING_TYPES(pose.scalar_type(), "rodrigues_cpu", [&] {
    const scalar_t* r = pose.data_ptr<scalar_t>();
    scalar_t* R = rot.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) rodrigues(r + i * 3, R + i * 9);
  });
  return rot;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> joints_cpu(const at::Tensor& betas, const at::Tensor& pose,
                                                          const at::Tensor& J_template, const at::Tensor& J_dirs,
                                                          at::IntArrayRef parents) {
  auto z = check_joints_args(betas, pose, J_template, J_dirs);
  Parents par = make_parents(parents, z.J);
  auto rot = rot_from_pose(pose, z.pose_is_matrix);
  auto joints = at::empty({z.B, z.J, 3}, betas.options());
  auto A = at::empty({z.B, z.J, 4, 4}, betas.options());
  if (z.B == 0) return {rot, joints, A};
  auto rest = rest_joints(betas, J_template, J_dirs).contiguous();
  AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "flame_lbs_joints_cpu", [&] {
    const scalar_t* R = rot.data_ptr<scalar_t>();
    const scalar_t* Jr = rest.data_ptr<scalar_t>();
    scalar_t* jo = joints.data_ptr<scalar_t>();
    scalar_t* Ao = A.data_ptr<scalar_t>();
    int64_t J = z.J;
    at::parallel_for(0, z.B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> G(J * 12);
      for (int64_t b = b0; b < b1; ++b)
        chain_forward((int)J, par, R + b * J * 9, Jr + b * J * 3, G.data(), jo + b * J * 3, Ao + b * J * 16);
    });
  });
  return {rot, joints, A};
}

at::Tensor zeros_if_none(const c10::optional<at::Tensor>& t, at::IntArrayRef shape, const at::Tensor& like) {
  if (t.has_value()) {
    FFA_CHECK(t->sizes() == shape, "gradient: expected shape ", shape, ", got ", t->sizes());
    return t->contiguous();
  }
  return at::zeros(shape, like.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> joints_backward_cpu(
    const c10::optional<at::Tensor>& grad_rot, const c10::optional<at::Tensor>& grad_joints,
    const c10::optional<at::Tensor>& grad_A, const at::Tensor& betas, const at::Tensor& pose,
    const at::Tensor& J_template, const at::Tensor& J_dirs, at::IntArrayRef parents) {
  auto z = check_joints_args(betas, pose, J_template, J_dirs);
  Parents par = make_parents(parents, z.J);
  int64_t B = z.B, J = z.J;
  auto gR_in = zeros_if_none(grad_rot, {B, J, 3, 3}, betas);
  auto gj_in = zeros_if_none(grad_joints, {B, J, 3}, betas);
  auto gA_in = zeros_if_none(grad_A, {B, J, 4, 4}, betas);
  auto rot = rot_from_pose(pose, z.pose_is_matrix);
  auto rest = rest_joints(betas, J_template, J_dirs).contiguous();
  auto grad_pose = at::empty_like(pose);
  auto grad_rest = at::empty({B, J, 3}, betas.options());
  if (B == 0) return {at::zeros_like(betas), grad_pose, grad_rest};
  AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "flame_lbs_joints_bwd_cpu", [&] {
    const scalar_t* R = rot.data_ptr<scalar_t>();
    const scalar_t* Jr = rest.data_ptr<scalar_t>();
    const scalar_t* gR = gR_in.data_ptr<scalar_t>();
    const scalar_t* gj = gj_in.data_ptr<scalar_t>();
    const scalar_t* gA = gA_in.data_ptr<scalar_t>();
    const scalar_t* pp = pose.data_ptr<scalar_t>();
    scalar_t* gp = grad_pose.data_ptr<scalar_t>();
    scalar_t* gr = grad_rest.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> G(J * 12), A(J * 16), jo(J * 3), gG(J * 12), grot(J * 9);
      for (int64_t b = b0; b < b1; ++b) {
        chain_forward((int)J, par, R + b * J * 9, Jr + b * J * 3, G.data(), jo.data(), A.data());
        chain_backward((int)J, par, R + b * J * 9, Jr + b * J * 3, G.data(), gA + b * J * 16, gj + b * J * 3,
                       gG.data(), grot.data(), gr + b * J * 3);
        for (int64_t i = 0; i < J * 9; ++i) grot[i] += gR[b * J * 9 + i];
        for (int64_t j = 0; j < J; ++j) {
          if (z.pose_is_matrix) {
            for (int i = 0; i < 9; ++i) gp[(b * J + j) * 9 + i] = grot[j * 9 + i];
          } else {
            rodrigues_backward(pp + (b * J + j) * 3, grot.data() + j * 9, gp + (b * J + j) * 3);
          }
        }
      }
    });
  });
  auto grad_betas = at::matmul(grad_rest.reshape({B, J * 3}), J_dirs.reshape({J * 3, z.S}));
  return {grad_betas, grad_pose, grad_rest};
}

// pose feature [B,(J-1)*9] = (R_j - I), j >= 1
at::Tensor pose_feature(const at::Tensor& rot) {
  int64_t B = rot.size(0), J = rot.size(1);
  auto eye = at::eye(3, rot.options());
  return (rot.slice(1, 1) - eye).reshape({B, (J - 1) * 9});
}

std::tuple<at::Tensor, at::Tensor> vertices_cpu(const at::Tensor& betas, const at::Tensor& rot, const at::Tensor& A,
                                                const at::Tensor& v_template, const at::Tensor& shapedirs,
                                                const at::Tensor& posedirs, const at::Tensor& W, bool /*pdl*/) {
  auto z = check_vertex_args(betas, rot, A, v_template, shapedirs, posedirs, W);
  int64_t B = z.B, V = z.V, J = z.J;
  auto verts = at::empty({B, V, 3}, betas.options());
  if (B == 0 || V == 0) return {verts, at::zeros({B, V, kVP}, betas.options())};
  auto v3 = at::matmul(betas, shapedirs.reshape({V * 3, z.S}).t());
  if (J > 1) v3.add_(at::matmul(pose_feature(rot), posedirs));
  // padded layout [B,V,kVP] (x, y, z, 0) shared with the CUDA kernels
  auto v_posed = at::zeros({B, V, kVP}, betas.options());
  v_posed.narrow(2, 0, 3).copy_(v3.reshape({B, V, 3}) + v_template);
  AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "flame_lbs_cpu", [&] {
    const scalar_t* vp = v_posed.data_ptr<scalar_t>();
    const scalar_t* Wp = W.data_ptr<scalar_t>();
    const scalar_t* Ap = A.data_ptr<scalar_t>();
    scalar_t* out = verts.data_ptr<scalar_t>();
    at::parallel_for(0, B * V, 1024, [&](int64_t i0, int64_t i1) {
      scalar_t M[12];
      for (int64_t i = i0; i < i1; ++i) {
        int64_t b = i / V, v = i % V;
        blend_transform((int)J, Wp + v * J, Ap + b * J * 16, M);
        apply_transform(M, vp + i * kVP, out + i * 3);
      }
    });
  });
  return {verts, v_posed};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vertices_backward_cpu(
    const c10::optional<at::Tensor>& grad_verts, const c10::optional<at::Tensor>& grad_vposed,
    const at::Tensor& betas, const at::Tensor& rot, const at::Tensor& A, const at::Tensor& shapedirs,
    const at::Tensor& posedirs, const at::Tensor& W, const at::Tensor& v_posed, bool need_vt, bool need_sd,
    bool need_pd, bool need_W) {
  int64_t V = W.size(0);
  auto v_template_like = at::empty({V, 3}, betas.options());
  auto z = check_vertex_args(betas, rot, A, v_template_like, shapedirs, posedirs, W);
  int64_t B = z.B, J = z.J, S = z.S;
  check_float_tensor(v_posed, "v_posed", betas.scalar_type(), {B, V, kVP});
  auto gout = zeros_if_none(grad_verts, {B, V, 3}, betas);
  // the pad column of grad_v_posed is ignored
  auto gvp = grad_vposed.has_value() ? zeros_if_none(grad_vposed, {B, V, kVP}, betas).narrow(2, 0, 3).contiguous()
                                     : at::zeros({B, V, 3}, betas.options());
  auto gM = at::empty({B, V, 12}, betas.options());
  if (B * V > 0) {
    AT_DISPATCH_FLOATING_TYPES(betas.scalar_type(), "flame_lbs_bwd_cpu", [&] {
      const scalar_t* vp = v_posed.data_ptr<scalar_t>();
      const scalar_t* Wp = W.data_ptr<scalar_t>();
      const scalar_t* Ap = A.data_ptr<scalar_t>();
      const scalar_t* go = gout.data_ptr<scalar_t>();
      scalar_t* g = gvp.data_ptr<scalar_t>();
      scalar_t* gMp = gM.data_ptr<scalar_t>();
      at::parallel_for(0, B * V, 1024, [&](int64_t i0, int64_t i1) {
        scalar_t M[12], gp[3];
        for (int64_t i = i0; i < i1; ++i) {
          int64_t b = i / V, v = i % V;
          blend_transform((int)J, Wp + v * J, Ap + b * J * 16, M);
          apply_transform_backward(M, vp + i * kVP, go + i * 3, gMp + i * 12, gp);
          for (int c = 0; c < 3; ++c) g[i * 3 + c] += gp[c];
        }
      });
    });
  }
  auto gvp2 = gvp.reshape({B, V * 3});
  auto grad_betas = at::matmul(gvp2, shapedirs.reshape({V * 3, S}));
  auto grad_rot = at::zeros({B, J, 3, 3}, betas.options());
  if (J > 1) grad_rot.slice(1, 1).copy_(at::matmul(gvp2, posedirs.t()).reshape({B, J - 1, 3, 3}));
  // grad_A[b,j,i] = sum_v W[v,j] gM[b,v,i]
  auto grad_A = at::zeros({B, J, 4, 4}, betas.options());
  grad_A.reshape({B, J, 16}).slice(2, 0, 12).copy_(at::matmul(W.t(), gM));
  auto empty = at::empty({0}, betas.options());
  auto grad_vt = need_vt ? gvp.sum(0) : empty;
  auto grad_sd = need_sd ? at::matmul(gvp2.t(), betas).reshape({V, 3, S}) : empty;
  auto grad_pd = need_pd ? at::matmul(pose_feature(rot).t(), gvp2) : empty;
  // grad_W[v,j] = sum_b sum_i A[b,j,i] gM[b,v,i]
  auto grad_W = need_W ? at::einsum("bji,bvi->vj", {A.reshape({B, J, 16}).slice(2, 0, 12), gM}).contiguous() : empty;
  return {grad_betas, grad_rot, grad_A, grad_vt, grad_sd, grad_pd, grad_W};
}

}  // namespace
}  // namespace lbs
}  // namespace ffa

TORCH_LIBRARY_IMPL(ffavatar, CPU, m) {
  m.impl("flame_lbs_joints", &ffa::lbs::joints_cpu);
  m.impl("flame_lbs_joints_bwd", &ffa::lbs::joints_backward_cpu);
  m.impl("flame_lbs", &ffa::lbs::vertices_cpu);
  m.impl("flame_lbs_bwd", &ffa::lbs::vertices_backward_cpu);
  m.impl("skin_gaussians", &ffa::lbs::skin_gaussians_cpu);
  m.impl("skin_gaussians_bwd", &ffa::lbs::skin_gaussians_backward_cpu);
}
