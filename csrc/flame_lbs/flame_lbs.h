// Fused FLAME / SMPL linear blend skinning (smplx `lbs` contract) and anchored-Gaussian skinning.
//
// Ops (schemas in csrc/registration.cpp; Python API in ffavatar_kernels/flame_lbs.py):
//   flame_lbs_joints(betas [B,S], pose [B,J,3] axis-angle | [B,J,3,3], J_template [J,3],
//                    J_dirs [J,3,S], int[] parents)
//       -> rot_mats [B,J,3,3], joints [B,J,3] (posed), transforms [B,J,4,4] (relative A_j)
//     rest joints = J_template + J_dirs . betas (J_template = J_regressor v_template,
//     J_dirs = J_regressor shapedirs: no pass over V), Rodrigues, kinematic chain. One block/frame.
//   flame_lbs(betas [B,S], rot_mats [B,J,3,3], transforms [B,J,4,4], v_template [V,3],
//             shapedirs [V,3,S], posedirs [(J-1)*9, V*3], lbs_weights [V,J])
//       -> vertices [B,V,3], v_posed [B,V,kVP] (shaped + pose-corrected rest vertices, x y z 0)
//     One launch: the S-blend of every vertex for all frames (shapedirs read once), correctives,
//     skinning.
//   skin_gaussians(v_posed [B,V,kVP], transforms [B,J,4,4], lbs_weights [V,J], anchor_idx [N,K]
//                  int32|int64, anchor_weights [N,K], offsets [N,3]|[B,N,3]|None,
//                  quats [N,4]|None, means_only, joint_weights [N,J]|None) -> means [B,N,3], quats [B,N,4]
//   and the matching *_bwd ops.
// Math shared with the CPU path: csrc/common/lbs_math.h. This header is torch-free (.cu files
// include it): launchers take raw pointers and a stream and return the launch error.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/lbs_math.h"

namespace ffa {
namespace lbs {

// rot_in: [B,J,9] if pose_is_matrix else axis-angle [B,J,3]. Outputs rot [B,J,9], joints [B,J,3],
// A [B,J,16].
cudaError_t launch_joints_fwd(const float* betas, const float* pose, bool pose_is_matrix, const float* J_template,
                              const float* J_dirs, const Parents& par, int B, int J, int S, float* rot,
                              float* joints, float* A, cudaStream_t stream);
// grad_rot [B,J,9] (may be null), grad_joints [B,J,3] (may be null), grad_A [B,J,16] (may be null).
// Outputs grad_betas [B,S], grad_pose (like pose), grad_rest [B,J,3].
cudaError_t launch_joints_bwd(const float* grad_rot, const float* grad_joints, const float* grad_A,
                              const float* betas, const float* pose, bool pose_is_matrix,
                              const float* J_template, const float* J_dirs, const Parents& par, int B, int J,
                              int S, float* grad_betas, float* grad_pose, float* grad_rest, cudaStream_t stream);

cudaError_t launch_vertices_fwd(const float* betas, const float* rot, const float* A, const float* v_template,
                                const float* shapedirs, const float* posedirs, const float* W, int B, int V,
                                int J, int S, float* verts, float* v_posed, bool pdl, cudaStream_t stream);
// grad_verts / grad_vposed may be null. Zero-initialized outputs (caller): grad_betas [B,S],
// grad_rot [B,J,9], grad_A [B,J,16]. Written (may be null = not needed): grad_vt [V,3],
// grad_sd [V,3,S], grad_pd [P,V*3], grad_W [V,J].
cudaError_t launch_vertices_bwd(const float* grad_verts, const float* grad_vposed, const float* betas,
                                const float* rot, const float* A, const float* shapedirs, const float* posedirs,
                                const float* W, const float* v_posed, int B, int V, int J, int S,
                                float* grad_betas, float* grad_rot, float* grad_A, float* grad_vt,
                                float* grad_sd, float* grad_pd, float* grad_W, cudaStream_t stream);

// offsets: null, [N,3] (offsets_batched=false) or [B,N,3]; quats: null or [N,4]; wg: null or [N,J]
// (precomputed anchor joint weights, else gathered from W). v_posed: [B,V,kVP], 16-byte aligned.
template <typename I>
cudaError_t launch_gaussians_fwd(const float* v_posed, const float* A, const float* W, const float* wg, const I* idx,
                                 const float* aw, const float* offsets, bool offsets_batched, const float* quats,
                                 bool means_only, int B, int V, int J, int N, int K, float* means, float* qout,
                                 bool pdl, cudaStream_t stream);
// grad_means / grad_q may be null. Zero-initialized (caller): grad_vposed [B,V,kVP], grad_A [B,J,16],
// grad_W [V,J] (null if not needed). Written: grad_aw [N,K] (null if not needed), grad_off (like
// offsets; null if none), grad_q [N,4] (null if no quats).
// The Gaussian backward splits the frames into groups of kBwdFrames (grid y); with more than one
// group, the per-Gaussian outputs (grad_aw, grad_offsets [N,3], grad_quats) are added atomically and
// must be zero-initialized by the caller.
constexpr int kBwdFrames = 4;
inline bool gaussians_bwd_accumulates(int64_t B) { return B > kBwdFrames; }

template <typename I>
cudaError_t launch_gaussians_bwd(const float* grad_means, const float* grad_q, const float* v_posed, const float* A,
                                 const float* W, const float* wg, const I* idx, const float* aw, const float* offsets,
                                 bool offsets_batched, const float* quats, bool means_only, int B, int V, int J,
                                 int N, int K, float* grad_vposed, float* grad_A, float* grad_W, float* grad_aw,
                                 float* grad_off, float* grad_quats, cudaStream_t stream);

// Fused one-frame forward (flame_skin_gaussians, flame_skin_fused.cu): joints + v_posed in one kernel,
// then the Gaussian kernel as a programmatic dependent launch. B = 1, J <= kFusedMaxJoints. Outputs: v_posed [V,kVP], joints [J,3], A [J,16]
// (scratch the caller may drop), means [N,3], qout [N,4]. wg / offsets ([N,3]) / quats may be null.
constexpr int kFusedMaxJoints = 8;
template <typename I>
struct FusedArgs {
  const float *betas, *pose;  // [S], [J,3] axis-angle or [J,9]
  bool pose_is_matrix;
  const float *J_template, *J_dirs;
  Parents parents;
  const float *v_template, *shapedirs, *posedirs, *W, *wg;
  const I* idx;
  const float *aw, *offsets, *quats;
  bool means_only;
  int V, J, S, N, K;
  float *v_posed, *joints, *A, *means, *qout;
};
template <typename I>
cudaError_t launch_skin_fused(const FusedArgs<I>& args, cudaStream_t stream);

}  // namespace lbs
}  // namespace ffa
