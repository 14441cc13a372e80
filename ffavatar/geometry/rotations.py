"""Rotations of the model layer: the kernel package's one quaternion <-> matrix implementation
(``ffavatar_kernels.reference.rotations``; wxyz quaternions), re-exported, plus tangent frames."""
from __future__ import annotations

import torch
from ffavatar_kernels.reference.rotations import matrix_to_quat, quat_mul, quat_normal_axis, quat_to_matrix

__all__ = ["quat_to_matrix", "matrix_to_quat", "quat_mul", "quat_normal_axis", "tangent_frames"]


def tangent_frames(normals: torch.Tensor) -> torch.Tensor:
    """[N,3] unit normals -> [N,3,3] rotations with columns (tangent, bitangent, normal).

    The tangent is the world up axis (+y) projected onto the tangent plane (world +x where the
    normal is nearly vertical), so frames vary smoothly over the face.
    """
    up = torch.zeros_like(normals)
    up[:, 1] = 1.0
    alt = torch.zeros_like(normals)
    alt[:, 0] = 1.0
    ref = torch.where((normals[:, 1:2].abs() > 0.95), alt, up)
    t = ref - (ref * normals).sum(-1, keepdim=True) * normals
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    b = torch.linalg.cross(normals, t)
    return torch.stack([t, b, normals], -1)
