"""Pure-PyTorch reference twins of ``ffavatar_kernels.flame_lbs`` and ``skin_gaussians``.

Written from the equations (smplx ``lbs`` contract), differentiable, any device and dtype. The
compiled kernels are tested against these in float64.

Conventions shared with the kernels (``csrc/common/lbs_math.h``):

- Rodrigues: ``R = I + a(θ²) K(r) + b(θ²) K(r)²`` with ``a = sin θ/θ``, ``b = (1-cos θ)/θ²``
  (Taylor series for θ < 0.5, exact at r = 0; no +1e-8 fudge as in smplx).
- Pose correctives use ``(R_j - I)`` of joints 1..J-1, flattened row-major, times ``posedirs``.
- ``transforms`` are the relative joint transforms ``A_j`` that skin rest-pose points:
  ``A_j = [G_j[:3,:3], G_j[:3,3] - G_j[:3,:3] J_j]`` with ``G_j`` the global joint transform.
- Quaternions are wxyz. The rotation of a blended matrix ``M = T_u[:3,:3]`` is Shepperd's method
  (branch = the largest of trace, m00, m11, m22; radicand clamped at 1e-30), normalized, sign chosen
  so that w >= 0. The posed Gaussian rotation is ``q(M) ⊗ normalize(q_g)`` (not re-canonicalized).
"""
from __future__ import annotations

import torch

from .rotations import QUAT_EPS as _QUAT_EPS
from .rotations import matrix_to_quat, quat_mul

__all__ = ["flame_lbs", "skin_gaussians", "batch_rodrigues", "matrix_to_quat",
           "shape_template"]

def _series_ab(s: torch.Tensor):
    """a(s)=sin θ/θ, b(s)=(1-cos θ)/θ² with s=θ², Taylor for small θ."""
    a_ser = 1 - s / 6 * (1 - s / 20 * (1 - s / 42 * (1 - s / 72 * (1 - s / 110))))
    b_ser = 0.5 * (1 - s / 12 * (1 - s / 30 * (1 - s / 56 * (1 - s / 90 * (1 - s / 132)))))
    small = s < 0.25
    s_safe = torch.where(small, torch.ones_like(s), s)
    th = torch.sqrt(s_safe)
    a_ex = torch.sin(th) / th
    b_ex = (1 - torch.cos(th)) / s_safe
    return torch.where(small, a_ser, a_ex), torch.where(small, b_ser, b_ex)


def batch_rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``[..., 3]`` -> rotation matrices ``[..., 3, 3]``."""
    x, y, z = rvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rvec.shape[:-1], 3, 3)
    s = (rvec * rvec).sum(-1)
    a, b = _series_ab(s)
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def _to_rotmats(pose: torch.Tensor, J: int) -> torch.Tensor:
    B = pose.shape[0]
    if pose.dim() == 4:
        return pose
    return batch_rodrigues(pose.reshape(B, J, 3))


def _rigid_chain(rot: torch.Tensor, joints: torch.Tensor, parents):
    """rot [B,J,3,3], joints [B,J,3] -> posed joints [B,J,3], relative transforms [B,J,4,4]."""
    parents = [int(p) for p in parents]
    B, J = joints.shape[:2]
    Gs = []
    for j in range(J):
        p = parents[j]
        rel = joints[:, j] - joints[:, p] if p >= 0 else joints[:, j]
        if p < 0:
            R, t = rot[:, j], rel
        else:
            Rp, tp = Gs[p]
            R = Rp @ rot[:, j]
            t = (Rp @ rel[..., None])[..., 0] + tp
        Gs.append((R, t))
    R = torch.stack([g[0] for g in Gs], 1)  # [B,J,3,3]
    t = torch.stack([g[1] for g in Gs], 1)  # [B,J,3]
    t_rel = t - (R @ joints[..., None])[..., 0]
    top = torch.cat([R, t_rel[..., None]], -1)  # [B,J,3,4]
    bottom = torch.zeros(B, J, 1, 4, dtype=top.dtype, device=top.device)
    bottom[..., 0, 3] = 1
    return t, torch.cat([top, bottom], -2)


def _posed_rest(v_shaped, rot, posedirs):
    """Pose-corrected rest vertices [B,V,3] (before skinning) from shaped vertices [B,V,3]."""
    B, V = v_shaped.shape[:2]
    J = rot.shape[1]
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = (rot[:, 1:] - eye).reshape(B, (J - 1) * 9)
    return v_shaped + (pose_feature @ posedirs).reshape(B, V, 3)


def _lbs_core(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights):
    J = J_regressor.shape[0]
    rot = _to_rotmats(pose, J)
    v_shaped = v_template + torch.einsum("bs,vcs->bvc", betas, shapedirs)
    joints_rest = torch.einsum("jv,bvc->bjc", J_regressor, v_shaped)
    joints, A = _rigid_chain(rot, joints_rest, parents)
    v_posed = _posed_rest(v_shaped, rot, posedirs)
    return v_posed, joints, A


def flame_lbs(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights,
              *, return_transforms=False):
    """Reference FLAME/SMPL linear blend skinning (same signature as ``ffavatar_kernels.flame_lbs``).

    betas [B,S], pose [B,J*3] axis-angle or [B,J,3,3], v_template [V,3], shapedirs [V,3,S],
    posedirs [(J-1)*9, V*3], J_regressor [J,V], parents [J], lbs_weights [V,J].
    Returns vertices [B,V,3], joints [B,J,3] (and transforms [B,J,4,4] if return_transforms).
    """
    v_posed, joints, A = _lbs_core(betas, pose, v_template, shapedirs, posedirs, J_regressor,
                                   parents, lbs_weights)
    T = torch.einsum("vj,bjrc->bvrc", lbs_weights, A[:, :, :3, :])  # [B,V,3,4]
    verts = (T[..., :3] @ v_posed[..., None])[..., 0] + T[..., 3]
    if return_transforms:
        return verts, joints, A
    return verts, joints


def skin_gaussians(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights,
                   anchor_idx, anchor_weights, offsets=None, quats=None, *, means_only=False):
    """Reference anchored-Gaussian skinning (same signature as ``ffavatar_kernels.skin_gaussians``).

    anchor_idx [N,K] (int), anchor_weights [N,K], offsets [N,3] | [B,N,3] | None,
    quats [N,4] wxyz | None. Returns means [B,N,3], quats [B,N,4].
    """
    v_posed, _, A = _lbs_core(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents,
                              lbs_weights)
    idx = anchor_idx.long()
    # p_u = sum_k w_k v_posed[i_k] + offset
    p = (anchor_weights[None, :, :, None] * v_posed[:, idx]).sum(2)  # [B,N,3]
    if offsets is not None:
        p = p + offsets
    Wu = (anchor_weights[:, :, None] * lbs_weights[idx]).sum(1)  # [N,J]
    return _posed_gaussians(torch.einsum("nj,bjrc->bnrc", Wu, A[:, :, :3, :]), p, quats, means_only)


def _posed_gaussians(T, p, quats, means_only):
    """Posed means [B,N,3] and quats [B,N,4] from the blended transforms T [B,N,3,4], the rest points
    p [B,N,3] and the canonical quats [N,4] (any norm) or None (identity)."""
    B, N = p.shape[:2]
    means = (T[..., :3] @ p[..., None])[..., 0] + T[..., 3]
    if quats is None:
        qg = torch.zeros(N, 4, dtype=means.dtype, device=means.device)
        qg[:, 0] = 1
    else:
        qg = quats / torch.clamp(quats.norm(dim=-1, keepdim=True), min=_QUAT_EPS)
    if means_only:
        return means, qg.expand(B, N, 4).clone()
    return means, quat_mul(matrix_to_quat(T[..., :3]), qg.expand(B, N, 4))


def shape_template(v_template, shapedirs, betas_shape):
    """Shaped template ``v_template + shapedirs[..., :S'] @ betas_shape`` ([V,3]) for the
    expression-only fast path (betas_shape [S'] or [1,S'])."""
    bs = betas_shape.reshape(-1)
    return v_template + torch.einsum("vcs,s->vc", shapedirs[..., : bs.shape[0]], bs)
