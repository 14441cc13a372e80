"""Quaternion <-> rotation matrix: the one implementation of the package and the model layer.

Quaternions are wxyz. ``quat_to_matrix`` normalizes its input (any norm, as the rasterizer's
``quats``); ``matrix_to_quat`` is Shepperd's method with the kernels' conventions
(``csrc/common/lbs_math.h``): branch = the largest of trace, m00, m11, m22, radicand clamped at
1e-30, result normalized and signed so that w >= 0. ``ffavatar.geometry.rotations`` re-exports these.
"""
from __future__ import annotations

import torch

__all__ = ["quat_to_matrix", "matrix_to_quat", "quat_mul", "quat_normal_axis"]

QUAT_EPS = 1e-12


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions.

    Args:
        q: [...,4] wxyz, any nonzero norm.

    Returns:
        [...,3,3] rotation matrices.
    """
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def quat_normal_axis(q: torch.Tensor) -> torch.Tensor:
    """Third column of ``quat_to_matrix(q)`` (the local z axis; a surface normal for our Gaussians).

    Args:
        q: [...,4] wxyz, any nonzero norm.

    Returns:
        [...,3] unit vectors.
    """
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(QUAT_EPS)
    w, x, y, z = q.unbind(-1)
    return torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)


def matrix_to_quat(M: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (wxyz, w >= 0) of ``M [...,3,3]`` by Shepperd's method (any 3x3 matrix; for a
    blend of rotations, the rotation nearest in Shepperd's sense). Returns [...,4]."""
    m00, m01, m02 = M[..., 0, 0], M[..., 0, 1], M[..., 0, 2]
    m10, m11, m12 = M[..., 1, 0], M[..., 1, 1], M[..., 1, 2]
    m20, m21, m22 = M[..., 2, 0], M[..., 2, 1], M[..., 2, 2]
    tr = m00 + m11 + m22
    # pairs: (w,x)=m21-m12, (w,y)=m02-m20, (w,z)=m10-m01, (x,y)=m01+m10, (x,z)=m02+m20, (y,z)=m12+m21
    wx, wy, wz = m21 - m12, m02 - m20, m10 - m01
    xy, xz, yz = m01 + m10, m02 + m20, m12 + m21
    cands = []
    for t, big, others in (
        (1 + tr, 0, (wx, wy, wz)),
        (1 + m00 - m11 - m22, 1, (wx, xy, xz)),
        (1 - m00 + m11 - m22, 2, (wy, xy, yz)),
        (1 - m00 - m11 + m22, 3, (wz, xz, yz)),
    ):
        s = 2 * torch.sqrt(torch.clamp(t, min=1e-30))
        comps = [o / s for o in others]
        comps.insert(big, s / 4)
        cands.append(torch.stack(comps, -1))
    stacked = torch.stack(cands, -2)  # [...,4,4]
    branch = torch.stack([tr, m00, m11, m22], -1).argmax(-1)
    q = torch.gather(stacked, -2, branch[..., None, None].expand(*branch.shape, 1, 4))[..., 0, :]
    q = q / torch.clamp(q.norm(dim=-1, keepdim=True), min=QUAT_EPS)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_mul(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``p ⊗ q`` of wxyz quaternions [...,4] (broadcasting) -> [...,4]."""
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack([
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    ], -1)
