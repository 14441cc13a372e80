// Every op schema of the library, in one place: torch.ops.ffavatar.<name>.
// Backend kernels register in csrc/<op>/<op>.cpp (CPU) and csrc/<op>/<op>_cuda.cpp (CUDA) with
// TORCH_LIBRARY_IMPL; autograd and fake (meta) kernels are attached in Python
// (ffavatar_kernels/<op>.py) with torch.library.register_autograd / register_fake.
#include <torch/library.h>

TORCH_LIBRARY(ffavatar, m) {
  // ---- flame_lbs, skin_gaussians (csrc/flame_lbs) -------------------------------------------
  // Joints: rest joints from J_template/J_dirs (= J_regressor @ v_template / shapedirs), Rodrigues
  // (pose [B,J,3]) or matrices (pose [B,J,3,3]), kinematic chain -> rot_mats, posed joints, A_j.
  m.def("flame_lbs_joints(Tensor betas, Tensor pose, Tensor J_template, Tensor J_dirs, int[] parents) "
        "-> (Tensor rot_mats, Tensor joints, Tensor transforms)");
  m.def("flame_lbs_joints_bwd(Tensor? grad_rot_mats, Tensor? grad_joints, Tensor? grad_transforms, "
        "Tensor betas, Tensor pose, Tensor J_template, Tensor J_dirs, int[] parents) "
        "-> (Tensor grad_betas, Tensor grad_pose, Tensor grad_joints_rest)");
  // Vertices: blendshapes + pose correctives + skinning; v_posed = pre-skinning vertices, padded
  // [B,V,4] (x, y, z, 0: 16-byte rows for the Gaussian gathers).
  // pdl: the CUDA kernel may start before the previous kernel of the stream ends (Hopper
  // programmatic dependent launch) and reads betas / shapedirs before waiting for it: only for
  // callers (ffavatar_kernels.flame_lbs) whose previous kernel is flame_lbs_joints producing
  // rot_mats / transforms. Same for skin_gaussians after flame_lbs (its prologue reads
  // lbs_weights, anchor_idx, anchor_weights, quats before waiting). Ignored on the CPU.
  m.def("flame_lbs(Tensor betas, Tensor rot_mats, Tensor transforms, Tensor v_template, Tensor shapedirs, "
        "Tensor posedirs, Tensor lbs_weights, bool pdl=False) -> (Tensor vertices, Tensor v_posed)");
  m.def("flame_lbs_bwd(Tensor? grad_vertices, Tensor? grad_v_posed, Tensor betas, Tensor rot_mats, "
        "Tensor transforms, Tensor shapedirs, Tensor posedirs, Tensor lbs_weights, Tensor v_posed, "
        "bool need_v_template, bool need_shapedirs, bool need_posedirs, bool need_lbs_weights) "
        "-> (Tensor grad_betas, Tensor grad_rot_mats, Tensor grad_transforms, Tensor grad_v_template, "
        "Tensor grad_shapedirs, Tensor grad_posedirs, Tensor grad_lbs_weights)");
  // Anchored Gaussians: means and rotations skinned by the anchor-blended transforms. v_posed is
  // flame_lbs' padded [B,V,4]. joint_weights [N,J] (optional) = sum_k anchor_weights[:,k,None] *
  // lbs_weights[anchor_idx[:,k]], frame-independent: passed, it replaces the K*J gathers of
  // lbs_weights per Gaussian (the caller caches it per model); it gets no gradient of its own (the
  // gradients of lbs_weights / anchor_weights are computed from them directly).
  m.def("skin_gaussians(Tensor v_posed, Tensor transforms, Tensor lbs_weights, Tensor anchor_idx, "
        "Tensor anchor_weights, Tensor? offsets, Tensor? quats, bool means_only, bool pdl=False, "
        "Tensor? joint_weights=None) -> (Tensor means, Tensor quats_out)");
  m.def("skin_gaussians_bwd(Tensor? grad_means, Tensor? grad_quats, Tensor v_posed, Tensor transforms, "
        "Tensor lbs_weights, Tensor anchor_idx, Tensor anchor_weights, Tensor? offsets, Tensor? quats, "
        "bool means_only, bool need_lbs_weights, bool need_anchor_weights, Tensor? joint_weights=None) -> "
        "(Tensor grad_v_posed, Tensor grad_transforms, Tensor grad_lbs_weights, Tensor grad_anchor_weights, "
        "Tensor grad_offsets, Tensor grad_quats)");


  // Fused one-frame forward of skin_gaussians (B = 1, J <= 8, no autograd; CUDA kernel, CPU = the
  // composition of the three ops above): joints + v_posed in one kernel, the Gaussians in a second
  // (programmatic dependent launch), instead of three dependent kernels.
  // ffavatar_kernels.skin_gaussians takes this path for one frame when no input requires grad.
  m.def("flame_skin_gaussians(Tensor betas, Tensor pose, Tensor J_template, Tensor J_dirs, int[] parents, "
        "Tensor v_template, Tensor shapedirs, Tensor posedirs, Tensor lbs_weights, Tensor anchor_idx, "
        "Tensor anchor_weights, Tensor? joint_weights, Tensor? offsets, Tensor? quats, bool means_only) "
        "-> (Tensor means, Tensor quats_out)");

  // ---- rasterize (csrc/rasterize) -------------------------------------------------------------
  // Five ops composed by ffavatar_kernels/rasterize.py (shapes: csrc/rasterize/rasterize.h).
  m.def("rasterize_project(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, "
        "Tensor Ks, int width, int height, float near_plane, float far_plane, float eps2d, bool antialiased, "
        "int tile_size) -> (Tensor means2d, Tensor depths, Tensor conics, Tensor opacities2d, Tensor radii, "
        "Tensor tiles_per_gauss)");
  m.def("rasterize_project_bwd(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, "
        "Tensor Ks, Tensor radii, Tensor v_means2d, Tensor v_depths, Tensor v_conics, Tensor v_opacities2d, "
        "int width, int height, int tile_size, float eps2d, bool antialiased) -> (Tensor v_means, Tensor v_quats, "
        "Tensor v_scales, Tensor v_opacities)");
  m.def("rasterize_bin(Tensor means2d, Tensor radii, Tensor depths, Tensor conics, Tensor opacities2d, "
        "Tensor tiles_per_gauss, int width, int height, int tile_size) -> (Tensor tile_offsets, "
        "Tensor flatten_ids)");
  m.def("rasterize_render(Tensor means2d, Tensor conics, Tensor opacities2d, Tensor colors, "
        "Tensor? backgrounds, Tensor tile_offsets, Tensor flatten_ids, int width, int height, int tile_size) "
        "-> (Tensor render_colors, Tensor render_alphas, Tensor last_ids, Tensor final_Ts, Tensor split_state)");
  m.def("rasterize_render_bwd(Tensor means2d, Tensor conics, Tensor opacities2d, Tensor colors, "
        "Tensor? backgrounds, Tensor tile_offsets, Tensor flatten_ids, Tensor final_Ts, Tensor last_ids, "
        "Tensor v_render_colors, Tensor v_render_alphas, int width, int height, int tile_size, "
        "Tensor? split_state=None) -> "
        "(Tensor v_means2d, Tensor v_conics, Tensor v_opacities2d, Tensor v_colors)");

}
