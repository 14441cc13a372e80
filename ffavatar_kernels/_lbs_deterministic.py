"""Deterministic-mode skinning: the three flame_lbs ops as PyTorch operations, for their backward.

Under ``torch.use_deterministic_algorithms(True)``, a ``flame_lbs()`` / ``skin_gaussians()`` call on
CUDA that needs a gradient runs through these functions instead of the CUDA backward kernels, whose
float atomics (joint transforms, per-vertex and per-Gaussian sums) add in an order that changes from
run to run. Here every reduction is a PyTorch op with a deterministic CUDA implementation in that
mode (matmuls with ``CUBLAS_WORKSPACE_CONFIG`` set, sums, ``index_select`` whose backward is the
deterministic ``index_add``), so the gradients are bit-for-bit repeatable. The forward values match
the kernels' up to float rounding (same equations as ``reference/flame_lbs.py``, written against the
ops' arguments: ``J_template`` / ``J_dirs`` instead of ``J_regressor``). The cost (more memory, more
launches) is measured in benchmarks/RESULTS.md ("Deterministic mode").

Arguments are the ops' (``_run_lbs`` / ``_run_skin`` in flame_lbs.py): betas [B,S], pose [B,J,3] /
[B,J*3] axis-angle or [B,J,3,3], J_template [J,3], J_dirs [J,3,S], parents (list), v_template [V,3],
shapedirs [V,3,S], posedirs [(J-1)*9, V*3], lbs_weights [V,J]; then anchor_idx [N,K],
anchor_weights [N,K], offsets [N,3] / [B,N,3] / None, quats [N,4] / None, means_only, joint_weights
(ignored: recomputed from lbs_weights and anchor_weights so that both get their gradients).
"""
from __future__ import annotations

import torch

from .reference.flame_lbs import _posed_gaussians, _posed_rest, _rigid_chain, _to_rotmats

__all__ = ["active", "lbs", "skin"]


def active(t: torch.Tensor) -> bool:
    """Whether a call on ``t``'s device takes the deterministic route (CUDA, PyTorch's switch on;
    the CPU kernels are deterministic already)."""
    return t.is_cuda and torch.are_deterministic_algorithms_enabled()


def _core(betas, pose, Jt, Jd, par, vt, sd, pd):
    """v_posed [B,V,3] (before skinning), joints [B,J,3], A [B,J,4,4]."""
    J = Jt.shape[0]
    rot = _to_rotmats(pose, J)
    joints_rest = Jt + torch.einsum("jcs,bs->bjc", Jd, betas)
    joints, A = _rigid_chain(rot, joints_rest, par)
    v_shaped = vt + torch.einsum("bs,vcs->bvc", betas, sd)
    return _posed_rest(v_shaped, rot, pd), joints, A


def lbs(betas, pose, Jt, Jd, par, vt, sd, pd, W):
    """(verts [B,V,3], joints [B,J,3], A [B,J,4,4]): what ``_run_lbs`` returns."""
    v_posed, joints, A = _core(betas, pose, Jt, Jd, par, vt, sd, pd)
    T = torch.einsum("vj,bjrc->bvrc", W, A[:, :, :3, :])  # [B,V,3,4]
    verts = (T[..., :3] @ v_posed[..., None])[..., 0] + T[..., 3]
    return verts, joints, A


def skin(betas, pose, Jt, Jd, par, vt, sd, pd, W, idx, aw, off, q, means_only, wg=None):
    """(means [B,N,3], quats [B,N,4]): what ``_run_skin`` returns."""
    v_posed, _, A = _core(betas, pose, Jt, Jd, par, vt, sd, pd)
    B, N, K = betas.shape[0], idx.shape[0], idx.shape[1]
    flat = idx.reshape(-1).long()
    anchors = v_posed.index_select(1, flat).reshape(B, N, K, 3)
    p = (aw[None, :, :, None] * anchors).sum(2)  # [B,N,3] rest point
    if off is not None:
        p = p + off
    Wu = (aw[:, :, None] * W.index_select(0, flat).reshape(N, K, -1)).sum(1)  # [N,J]
    return _posed_gaussians(torch.einsum("nj,bjrc->bnrc", Wu, A[:, :, :3, :]), p, q, means_only)
