// CUDA glue of flame_lbs_joints, flame_lbs, skin_gaussians (+ backwards): checks, allocation,
// stream, launch-error checks. Kernels: flame_lbs_fwd.cu / flame_lbs_bwd.cu (float32 only).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "flame_lbs/flame_lbs.h"
#include "flame_lbs/flame_lbs_checks.h"

namespace ffa {
namespace lbs {
namespace {

void require_float(const at::Tensor& t, const char* name) {
  FFA_CHECK(t.scalar_type() == at::kFloat, name, ": the CUDA kernels take float32, got ", t.scalar_type());
}

// v_posed rows are gathered as float4 (and grad_v_posed scattered as float4 atomics on sm_90)
void require_aligned16(const at::Tensor& v_posed) {
  FFA_CHECK(reinterpret_cast<uintptr_t>(v_posed.data_ptr()) % 16 == 0,
              "v_posed: expected a 16-byte aligned tensor (flame_lbs' output or a copy of it)");
}

const float* opt_ptr(const c10::optional<at::Tensor>& t, at::IntArrayRef shape, const char* name) {
  if (!t.has_value()) return nullptr;
  FFA_CHECK(t->sizes() == shape, name, ": expected shape ", shape, ", got ", t->sizes());
  FFA_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat, name, ": must be contiguous float32");
  return t->data_ptr<float>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> joints_cuda(const at::Tensor& betas, const at::Tensor& pose,
                                                           const at::Tensor& J_template, const at::Tensor& J_dirs,
                                                           at::IntArrayRef parents) {
  auto z = check_joints_args(betas, pose, J_template, J_dirs);
  require_float(betas, "betas");
  Parents par = make_parents(parents, z.J);
  c10::cuda::CUDAGuard guard(betas.device());
  auto rot = at::empty({z.B, z.J, 3, 3}, betas.options());
  auto joints = at::empty({z.B, z.J, 3}, betas.options());
  auto A = at::empty({z.B, z.J, 4, 4}, betas.options());
  FFA_CHECK_CUDA(launch_joints_fwd(betas.data_ptr<float>(), pose.data_ptr<float>(), z.pose_is_matrix,
                                   J_template.data_ptr<float>(), J_dirs.data_ptr<float>(), par, (int)z.B, (int)z.J,
                                   (int)z.S, rot.data_ptr<float>(), joints.data_ptr<float>(), A.data_ptr<float>(),
                                   c10::cuda::getCurrentCUDAStream()),
                 "flame_lbs_joints kernel");
  return {rot, joints, A};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> joints_backward_cuda(
    const c10::optional<at::Tensor>& grad_rot, const c10::optional<at::Tensor>& grad_joints,
    const c10::optional<at::Tensor>& grad_A, const at::Tensor& betas, const at::Tensor& pose,
    const at::Tensor& J_template, const at::Tensor& J_dirs, at::IntArrayRef parents) {
  auto z = check_joints_args(betas, pose, J_template, J_dirs);
  require_float(betas, "betas");
  Parents par = make_parents(parents, z.J);
  c10::cuda::CUDAGuard guard(betas.device());
  const float* gR = opt_ptr(grad_rot, {z.B, z.J, 3, 3}, "grad_rot_mats");
  const float* gj = opt_ptr(grad_joints, {z.B, z.J, 3}, "grad_joints");
  const float* gA = opt_ptr(grad_A, {z.B, z.J, 4, 4}, "grad_transforms");
  auto grad_betas = at::empty_like(betas);
  auto grad_pose = at::empty_like(pose);
  auto grad_rest = at::empty({z.B, z.J, 3}, betas.options());
  FFA_CHECK_CUDA(launch_joints_bwd(gR, gj, gA, betas.data_ptr<float>(), pose.data_ptr<float>(), z.pose_is_matrix,
                                   J_template.data_ptr<float>(), J_dirs.data_ptr<float>(), par, (int)z.B, (int)z.J,
                                   (int)z.S, grad_betas.data_ptr<float>(), grad_pose.data_ptr<float>(),
                                   grad_rest.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
                 "flame_lbs_joints_bwd kernel");
  return {grad_betas, grad_pose, grad_rest};
}

std::tuple<at::Tensor, at::Tensor> vertices_cuda(const at::Tensor& betas, const at::Tensor& rot, const at::Tensor& A,
                                                 const at::Tensor& v_template, const at::Tensor& shapedirs,
                                                 const at::Tensor& posedirs, const at::Tensor& W, bool pdl) {
  auto z = check_vertex_args(betas, rot, A, v_template, shapedirs, posedirs, W);
  require_float(betas, "betas");
  c10::cuda::CUDAGuard guard(betas.device());
  auto verts = at::empty({z.B, z.V, 3}, betas.options());
  auto v_posed = at::empty({z.B, z.V, kVP}, betas.options());  // pad column written by the kernel
  FFA_CHECK_CUDA(launch_vertices_fwd(betas.data_ptr<float>(), rot.data_ptr<float>(), A.data_ptr<float>(),
                                     v_template.data_ptr<float>(), shapedirs.data_ptr<float>(),
                                     posedirs.data_ptr<float>(), W.data_ptr<float>(), (int)z.B, (int)z.V, (int)z.J,
                                     (int)z.S, verts.data_ptr<float>(), v_posed.data_ptr<float>(), pdl,
                                     c10::cuda::getCurrentCUDAStream()),
                 "flame_lbs kernel");
  return {verts, v_posed};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> vertices_backward_cuda(
    const c10::optional<at::Tensor>& grad_verts, const c10::optional<at::Tensor>& grad_vposed,
    const at::Tensor& betas, const at::Tensor& rot, const at::Tensor& A, const at::Tensor& shapedirs,
    const at::Tensor& posedirs, const at::Tensor& W, const at::Tensor& v_posed, bool need_vt, bool need_sd,
    bool need_pd, bool need_W) {
  const int64_t V = W.size(0);
  auto vt_like = at::empty({V, 3}, betas.options());
  auto z = check_vertex_args(betas, rot, A, vt_like, shapedirs, posedirs, W);
  require_float(betas, "betas");
  check_float_tensor(v_posed, "v_posed", at::kFloat, {z.B, V, kVP});
  c10::cuda::CUDAGuard guard(betas.device());
  const float* go = opt_ptr(grad_verts, {z.B, V, 3}, "grad_vertices");
  const float* gx = opt_ptr(grad_vposed, {z.B, V, kVP}, "grad_v_posed");  // pad column ignored
  auto o = betas.options();
  auto grad_betas = at::zeros_like(betas);
  auto grad_rot = at::zeros_like(rot);
  auto grad_A = at::zeros_like(A);
  auto e = at::empty({0}, o);
  // written in full by the kernel when B > 0; zero when there is no frame
  auto mk = [&](bool need, at::IntArrayRef shape) {
    return need ? (z.B > 0 ? at::empty(shape, o) : at::zeros(shape, o)) : e;
  };
  auto grad_vt = mk(need_vt, {V, 3});
  auto grad_sd = mk(need_sd, shapedirs.sizes());
  auto grad_pd = mk(need_pd, posedirs.sizes());
  auto grad_W = mk(need_W, W.sizes());
  FFA_CHECK_CUDA(launch_vertices_bwd(go, gx, betas.data_ptr<float>(), rot.data_ptr<float>(), A.data_ptr<float>(),
                                     shapedirs.data_ptr<float>(), posedirs.data_ptr<float>(), W.data_ptr<float>(),
                                     v_posed.data_ptr<float>(), (int)z.B, (int)V, (int)z.J, (int)z.S,
                                     grad_betas.data_ptr<float>(), grad_rot.data_ptr<float>(),
                                     grad_A.data_ptr<float>(), need_vt ? grad_vt.data_ptr<float>() : nullptr,
                                     need_sd ? grad_sd.data_ptr<float>() : nullptr,
                                     need_pd ? grad_pd.data_ptr<float>() : nullptr,
                                     need_W ? grad_W.data_ptr<float>() : nullptr, c10::cuda::getCurrentCUDAStream()),
                 "flame_lbs_bwd kernel");
  return {grad_betas, grad_rot, grad_A, grad_vt, grad_sd, grad_pd, grad_W};
}

std::tuple<at::Tensor, at::Tensor> gaussians_cuda(const at::Tensor& v_posed, const at::Tensor& A, const at::Tensor& W,
                                                  const at::Tensor& idx, const at::Tensor& aw,
                                                  const c10::optional<at::Tensor>& offsets,
                                                  const c10::optional<at::Tensor>& quats, bool means_only, bool pdl,
                                                  const c10::optional<at::Tensor>& joint_weights) {
  auto z = check_gaussian_args(v_posed, A, W, idx, aw, offsets, quats, joint_weights);
  require_float(v_posed, "v_posed");
  require_aligned16(v_posed);
  const float* wg = joint_weights.has_value() ? joint_weights->data_ptr<float>() : nullptr;
  c10::cuda::CUDAGuard guard(v_posed.device());
  auto means = at::empty({z.B, z.N, 3}, v_posed.options());
  auto qout = at::empty({z.B, z.N, 4}, v_posed.options());
  const float* off = offsets.has_value() ? offsets->data_ptr<float>() : nullptr;
  const float* q = quats.has_value() ? quats->data_ptr<float>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err;
  if (idx.scalar_type() == at::kInt)
    err = launch_gaussians_fwd<int32_t>(v_posed.data_ptr<float>(), A.data_ptr<float>(), W.data_ptr<float>(), wg,
                                        idx.data_ptr<int32_t>(), aw.data_ptr<float>(), off, z.offsets_batched, q,
                                        means_only, (int)z.B, (int)z.V, (int)z.J, (int)z.N, (int)z.K,
                                        means.data_ptr<float>(), qout.data_ptr<float>(), pdl, stream);
  else
    err = launch_gaussians_fwd<int64_t>(v_posed.data_ptr<float>(), A.data_ptr<float>(), W.data_ptr<float>(), wg,
                                        idx.data_ptr<int64_t>(), aw.data_ptr<float>(), off, z.offsets_batched, q,
                                        means_only, (int)z.B, (int)z.V, (int)z.J, (int)z.N, (int)z.K,
                                        means.data_ptr<float>(), qout.data_ptr<float>(), pdl, stream);
  FFA_CHECK_CUDA(err, "skin_gaussians kernel");
  return {means, qout};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussians_backward_cuda(
    const c10::optional<at::Tensor>& grad_means, const c10::optional<at::Tensor>& grad_quats, const at::Tensor& v_posed,
    const at::Tensor& A, const at::Tensor& W, const at::Tensor& idx, const at::Tensor& aw,
    const c10::optional<at::Tensor>& offsets, const c10::optional<at::Tensor>& quats, bool means_only, bool need_W,
    bool need_aw, const c10::optional<at::Tensor>& joint_weights) {
  auto z = check_gaussian_args(v_posed, A, W, idx, aw, offsets, quats, joint_weights);
  require_float(v_posed, "v_posed");
  require_aligned16(v_posed);
  const float* wg = joint_weights.has_value() ? joint_weights->data_ptr<float>() : nullptr;
  c10::cuda::CUDAGuard guard(v_posed.device());
  const float* gm = opt_ptr(grad_means, {z.B, z.N, 3}, "grad_means");
  const float* gq = opt_ptr(grad_quats, {z.B, z.N, 4}, "grad_quats");
  auto o = v_posed.options();
  auto e = at::empty({0}, o);
  auto grad_vp = at::zeros_like(v_posed);
  auto grad_A = at::zeros_like(A);
  auto grad_W = need_W ? at::zeros_like(W) : e;
  // written once per element when one frame group covers B, else accumulated (see flame_lbs.h)
  const bool zero = z.B == 0 || gaussians_bwd_accumulates(z.B);
  auto like = [&](const at::Tensor& t) { return zero ? at::zeros_like(t) : at::empty_like(t); };
  auto grad_aw = need_aw ? like(aw) : e;
  auto grad_off = offsets.has_value() ? (z.offsets_batched && z.B > 0 ? at::empty_like(*offsets) : like(*offsets)) : e;
  auto grad_q = quats.has_value() ? like(*quats) : e;
  const float* off = offsets.has_value() ? offsets->data_ptr<float>() : nullptr;
  const float* q = quats.has_value() ? quats->data_ptr<float>() : nullptr;
  float* p_gW = need_W ? grad_W.data_ptr<float>() : nullptr;
  float* p_gaw = need_aw ? grad_aw.data_ptr<float>() : nullptr;
  float* p_goff = off ? grad_off.data_ptr<float>() : nullptr;
  float* p_gq = q ? grad_q.data_ptr<float>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err;
  if (idx.scalar_type() == at::kInt)
    err = launch_gaussians_bwd<int32_t>(gm, gq, v_posed.data_ptr<float>(), A.data_ptr<float>(), W.data_ptr<float>(), wg,
                                        idx.data_ptr<int32_t>(), aw.data_ptr<float>(), off, z.offsets_batched, q,
                                        means_only, (int)z.B, (int)z.V, (int)z.J, (int)z.N, (int)z.K,
                                        grad_vp.data_ptr<float>(), grad_A.data_ptr<float>(), p_gW, p_gaw, p_goff, p_gq,
                                        stream);
  else
    err = launch_gaussians_bwd<int64_t>(gm, gq, v_posed.data_ptr<float>(), A.data_ptr<float>(), W.data_ptr<float>(), wg,
                                        idx.data_ptr<int64_t>(), aw.data_ptr<float>(), off, z.offsets_batched, q,
                                        means_only, (int)z.B, (int)z.V, (int)z.J, (int)z.N, (int)z.K,
                                        grad_vp.data_ptr<float>(), grad_A.data_ptr<float>(), p_gW, p_gaw, p_goff, p_gq,
                                        stream);
  FFA_CHECK_CUDA(err, "skin_gaussians_bwd kernel");
  return {grad_vp, grad_A, grad_W, grad_aw, grad_off, grad_q};
}

// flame_skin_gaussians: the fused one-frame forward (flame_skin_fused.cu).
std::tuple<at::Tensor, at::Tensor> skin_fused_cuda(
    const at::Tensor& betas, const at::Tensor& pose, const at::Tensor& J_template, const at::Tensor& J_dirs,
    at::IntArrayRef parents, const at::Tensor& v_template, const at::Tensor& shapedirs, const at::Tensor& posedirs,
    const at::Tensor& W, const at::Tensor& idx, const at::Tensor& aw, const c10::optional<at::Tensor>& joint_weights,
    const c10::optional<at::Tensor>& offsets, const c10::optional<at::Tensor>& quats, bool means_only) {
  auto zj = check_joints_args(betas, pose, J_template, J_dirs);
  require_float(betas, "betas");
  FFA_CHECK(zj.B == 1, "flame_skin_gaussians: one frame (betas [1,S]), got B=", zj.B);
  FFA_CHECK(zj.J <= kFusedMaxJoints, "flame_skin_gaussians: at most ", kFusedMaxJoints, " joints, got J=", zj.J);
  Parents par = make_parents(parents, zj.J);
  FFA_CHECK(v_template.dim() == 2, "v_template: expected shape [V,3], got ", v_template.sizes());
  const int64_t V = v_template.size(0), J = zj.J, S = zj.S;
  check_float_tensor(v_template, "v_template", at::kFloat, {V, 3});
  check_float_tensor(shapedirs, "shapedirs", at::kFloat, {V, 3, S});
  check_float_tensor(posedirs, "posedirs", at::kFloat, {(J - 1) * 9, V * 3});
  for (auto* t : {&v_template, &shapedirs, &posedirs}) check_device(*t, "flame_skin_gaussians argument", betas);
  c10::cuda::CUDAGuard guard(betas.device());
  auto o = betas.options();
  auto v_posed = at::empty({1, V, kVP}, o);
  auto A = at::empty({1, J, 4, 4}, o);
  auto joints = at::empty({1, J, 3}, o);
  auto z = check_gaussian_args(v_posed, A, W, idx, aw, offsets, quats, joint_weights);
  auto means = at::empty({1, z.N, 3}, o);
  auto qout = at::empty({1, z.N, 4}, o);
  auto run = [&](auto* ip) {
    using I = std::remove_const_t<std::remove_pointer_t<decltype(ip)>>;
    FusedArgs<I> a{betas.data_ptr<float>(), pose.data_ptr<float>(), zj.pose_is_matrix, J_template.data_ptr<float>(),
                   J_dirs.data_ptr<float>(), par, v_template.data_ptr<float>(), shapedirs.data_ptr<float>(),
                   posedirs.data_ptr<float>(), W.data_ptr<float>(),
                   joint_weights.has_value() ? joint_weights->data_ptr<float>() : nullptr, ip, aw.data_ptr<float>(),
                   offsets.has_value() ? offsets->data_ptr<float>() : nullptr,
                   quats.has_value() ? quats->data_ptr<float>() : nullptr, means_only, (int)V, (int)J, (int)S,
                   (int)z.N, (int)z.K, v_posed.data_ptr<float>(), joints.data_ptr<float>(), A.data_ptr<float>(),
                   means.data_ptr<float>(), qout.data_ptr<float>()};
    return launch_skin_fused<I>(a, c10::cuda::getCurrentCUDAStream());
  };
  cudaError_t err = idx.scalar_type() == at::kInt ? run(idx.data_ptr<int32_t>()) : run(idx.data_ptr<int64_t>());
  FFA_CHECK_CUDA(err, "flame_skin_gaussians kernel");
  return {means, qout};
}

}  // namespace
}  // namespace lbs
}  // namespace ffa

TORCH_LIBRARY_IMPL(ffavatar, CUDA, m) {
  m.impl("flame_skin_gaussians", &ffa::lbs::skin_fused_cuda);
  m.impl("flame_lbs_joints", &ffa::lbs::joints_cuda);
  m.impl("flame_lbs_joints_bwd", &ffa::lbs::joints_backward_cuda);
  m.impl("flame_lbs", &ffa::lbs::vertices_cuda);
  m.impl("flame_lbs_bwd", &ffa::lbs::vertices_backward_cuda);
  m.impl("skin_gaussians", &ffa::lbs::gaussians_cuda);
  m.impl("skin_gaussians_bwd", &ffa::lbs::gaussians_backward_cuda);
}
