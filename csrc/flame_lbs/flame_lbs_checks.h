// Torch-side argument checks and op entry points of flame_lbs / skin_gaussians, shared by the CPU
// (flame_lbs.cpp, skin_gaussians_cpu.cpp) and CUDA (flame_lbs_cuda.cpp) implementations.
// Python validates first with friendlier messages; these guard direct torch.ops calls.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "common/checks.h"
#include "common/lbs_math.h"

namespace ffa {
namespace lbs {

inline Parents make_parents(at::IntArrayRef parents, int64_t J) {
  FFA_CHECK((int64_t)parents.size() == J, "parents: expected ", J, " entries (J from J_template), got ",
              parents.size());
  FFA_CHECK(J >= 1 && J <= kMaxJoints, "parents: expected 1..", kMaxJoints, " joints, got ", J);
  Parents par;
  for (int j = 0; j < kMaxJoints; ++j) par.p[j] = -1;
  for (int64_t j = 0; j < J; ++j) {
    int64_t p = parents[j];
    FFA_CHECK(j == 0 ? p == -1 : (p >= 0 && p < j), "parents: must be a tree in topological order ",
                "(parents[0] == -1, 0 <= parents[j] < j), got parents[", j, "] = ", p);
    par.p[j] = (int32_t)p;
  }
  return par;
}

inline void check_float_tensor(const at::Tensor& t, const char* name, at::ScalarType dt, at::IntArrayRef shape) {
  FFA_CHECK(t.scalar_type() == dt, name, ": expected dtype ", dt, ", got ", t.scalar_type());
  FFA_CHECK(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
  FFA_CHECK(t.is_contiguous(), name, ": must be contiguous");
}

inline void check_device(const at::Tensor& t, const char* name, const at::Tensor& ref) {
  FFA_CHECK(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(), ", got one on ",
              t.device());
}

// Sizes of one flame_lbs_joints call (validated).
struct JointSizes {
  int64_t B, J, S;
  bool pose_is_matrix;
};

inline JointSizes check_joints_args(const at::Tensor& betas, const at::Tensor& pose, const at::Tensor& J_template,
                                    const at::Tensor& J_dirs) {
  FFA_CHECK(betas.dim() == 2, "betas: expected shape [B,S], got ", betas.sizes());
  FFA_CHECK(J_template.dim() == 2 && J_template.size(1) == 3, "J_template: expected [J,3], got ",
              J_template.sizes());
  JointSizes z{betas.size(0), J_template.size(0), betas.size(1), pose.dim() == 4};
  auto dt = betas.scalar_type();
  FFA_CHECK(dt == at::kFloat || dt == at::kDouble, "betas: expected dtype float32 or float64, got ", dt);
  check_float_tensor(betas, "betas", dt, {z.B, z.S});
  if (z.pose_is_matrix) check_float_tensor(pose, "pose", dt, {z.B, z.J, 3, 3});
  else check_float_tensor(pose, "pose", dt, {z.B, z.J, 3});
  check_float_tensor(J_template, "J_template", dt, {z.J, 3});
  check_float_tensor(J_dirs, "J_dirs", dt, {z.J, 3, z.S});
  check_device(pose, "pose", betas);
  check_device(J_template, "J_template", betas);
  check_device(J_dirs, "J_dirs", betas);
  return z;
}

struct VertexSizes {
  int64_t B, V, J, S;
};

inline VertexSizes check_vertex_args(const at::Tensor& betas, const at::Tensor& rot, const at::Tensor& A,
                                     const at::Tensor& v_template, const at::Tensor& shapedirs,
                                     const at::Tensor& posedirs, const at::Tensor& W) {
  FFA_CHECK(betas.dim() == 2, "betas: expected shape [B,S], got ", betas.sizes());
  FFA_CHECK(v_template.dim() == 2, "v_template: expected shape [V,3], got ", v_template.sizes());
  FFA_CHECK(rot.dim() == 4, "rot_mats: expected shape [B,J,3,3], got ", rot.sizes());
  VertexSizes z{betas.size(0), v_template.size(0), rot.size(1), betas.size(1)};
  auto dt = betas.scalar_type();
  FFA_CHECK(dt == at::kFloat || dt == at::kDouble, "betas: expected dtype float32 or float64, got ", dt);
  FFA_CHECK(z.J >= 1 && z.J <= kMaxJoints, "rot_mats: expected 1..", kMaxJoints, " joints, got ", z.J);
  check_float_tensor(betas, "betas", dt, {z.B, z.S});
  check_float_tensor(rot, "rot_mats", dt, {z.B, z.J, 3, 3});
  check_float_tensor(A, "transforms", dt, {z.B, z.J, 4, 4});
  check_float_tensor(v_template, "v_template", dt, {z.V, 3});
  check_float_tensor(shapedirs, "shapedirs", dt, {z.V, 3, z.S});
  check_float_tensor(posedirs, "posedirs", dt, {(z.J - 1) * 9, z.V * 3});
  check_float_tensor(W, "lbs_weights", dt, {z.V, z.J});
  for (auto* p : {&rot, &A, &v_template, &shapedirs, &posedirs, &W}) check_device(*p, "flame_lbs argument", betas);
  return z;
}

struct GaussianSizes {
  int64_t B, V, J, N, K;
  bool offsets_batched;
};

inline GaussianSizes check_gaussian_args(const at::Tensor& v_posed, const at::Tensor& A, const at::Tensor& W,
                                         const at::Tensor& idx, const at::Tensor& aw,
                                         const c10::optional<at::Tensor>& offsets,
                                         const c10::optional<at::Tensor>& quats,
                                         const c10::optional<at::Tensor>& joint_weights) {
  FFA_CHECK(v_posed.dim() == 3, "v_posed: expected shape [B,V,", kVP, "] (flame_lbs' padded v_posed), got ",
              v_posed.sizes());
  FFA_CHECK(W.dim() == 2, "lbs_weights: expected shape [V,J], got ", W.sizes());
  FFA_CHECK(idx.dim() == 2, "anchor_idx: expected shape [N,K], got ", idx.sizes());
  GaussianSizes z{v_posed.size(0), v_posed.size(1), W.size(1), idx.size(0), idx.size(1), false};
  auto dt = v_posed.scalar_type();
  FFA_CHECK(dt == at::kFloat || dt == at::kDouble, "v_posed: expected dtype float32 or float64, got ", dt);
  FFA_CHECK(z.J >= 1 && z.J <= kMaxJoints, "lbs_weights: expected 1..", kMaxJoints, " joints, got ", z.J);
  FFA_CHECK(z.K >= 1 && z.K <= 4, "anchor_idx: expected 1..4 anchors per Gaussian, got K=", z.K);
  check_float_tensor(v_posed, "v_posed", dt, {z.B, z.V, kVP});
  check_float_tensor(A, "transforms", dt, {z.B, z.J, 4, 4});
  check_float_tensor(W, "lbs_weights", dt, {z.V, z.J});
  FFA_CHECK(idx.scalar_type() == at::kInt || idx.scalar_type() == at::kLong,
              "anchor_idx: expected dtype int32 or int64, got ", idx.scalar_type());
  FFA_CHECK(idx.is_contiguous(), "anchor_idx: must be contiguous");
  check_float_tensor(aw, "anchor_weights", dt, {z.N, z.K});
  check_device(A, "transforms", v_posed);
  check_device(W, "lbs_weights", v_posed);
  check_device(idx, "anchor_idx", v_posed);
  check_device(aw, "anchor_weights", v_posed);
  if (idx.device().is_cpu() && idx.numel() > 0) {
    // An index outside [0, V) would read out of bounds. Free to check on the CPU; on CUDA it would
    // be a host sync per call (anchors come from subdivision, built once: validate them there).
    const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
    FFA_CHECK_VALUE(lo >= 0 && hi < z.V, "anchor_idx: expected indices in [0, ", z.V,
                      ") (V from v_template), got values in [", lo, ", ", hi, "]");
  }
  if (offsets.has_value()) {
    z.offsets_batched = offsets->dim() == 3;
    if (z.offsets_batched) check_float_tensor(*offsets, "offsets", dt, {z.B, z.N, 3});
    else check_float_tensor(*offsets, "offsets", dt, {z.N, 3});
    check_device(*offsets, "offsets", v_posed);
  }
  if (quats.has_value()) {
    check_float_tensor(*quats, "quats", dt, {z.N, 4});
    check_device(*quats, "quats", v_posed);
  }
  if (joint_weights.has_value()) {  // sum_k anchor_weights[n,k] lbs_weights[anchor_idx[n,k]], precomputed
    check_float_tensor(*joint_weights, "joint_weights", dt, {z.N, z.J});
    check_device(*joint_weights, "joint_weights", v_posed);
  }
  return z;
}

// CPU implementations (flame_lbs.cpp, skin_gaussians_cpu.cpp).
std::tuple<at::Tensor, at::Tensor> skin_gaussians_cpu(const at::Tensor& v_posed, const at::Tensor& A,
                                                      const at::Tensor& W, const at::Tensor& idx,
                                                      const at::Tensor& aw, const c10::optional<at::Tensor>& offsets,
                                                      const c10::optional<at::Tensor>& quats, bool means_only,
                                                      bool pdl, const c10::optional<at::Tensor>& joint_weights);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> skin_gaussians_backward_cpu(
    const c10::optional<at::Tensor>& grad_means, const c10::optional<at::Tensor>& grad_quats, const at::Tensor& v_posed,
    const at::Tensor& A, const at::Tensor& W, const at::Tensor& idx, const at::Tensor& aw,
    const c10::optional<at::Tensor>& offsets, const c10::optional<at::Tensor>& quats, bool means_only,
    bool need_W, bool need_aw, const c10::optional<at::Tensor>& joint_weights);

}  // namespace lbs
}  // namespace ffa
