"""Lambert + ambient shading from the posed normals of every frame.

A Gaussian's normal is the third axis of its posed rotation (the canonical frames put the surface
normal there). A key light and a weaker fill light are fixed relative to the camera (key: above-left
of the camera, fill: right), so the face stays lit while the camera orbits;
``color = albedo * (ambient + key * max(0, n.l_key) + fill * max(0, n.l_fill))``.
"""
from __future__ import annotations

import math

import torch

from ..geometry.rotations import quat_normal_axis

__all__ = ["shade"]


def shade(albedo: torch.Tensor, quats: torch.Tensor, viewmats: torch.Tensor, *, ambient: float = 0.38,
          key: float = 0.72, fill: float = 0.22) -> torch.Tensor:
    """Lambert + ambient shading with lights attached to the camera.

    Args:
        albedo: [N,3] or [B,N,3] colors in [0,1].
        quats: [B,N,4] posed rotations (wxyz); their third axis is the surface normal.
        viewmats: [B,4,4] world-to-camera of each frame.

    Returns:
        [B,N,3] shaded colors in [0,1].
    """
    n = quat_normal_axis(quats)                                                       # [B,N,3]
    R = viewmats[:, :3, :3]                                                           # world -> camera
    # the light directions in world space, R^T l, with l as Python floats: no host-to-device copy per
    # call, so the animation engine can capture this in a CUDA graph
    lk_w = _light(R, _KEY)[:, None, :]                                                # [B,1,3]
    lf_w = _light(R, _FILL)[:, None, :]
    lum = ambient + key * (n * lk_w).sum(-1).clamp_min(0) + fill * (n * lf_w).sum(-1).clamp_min(0)
    return (albedo * lum[..., None]).clamp(0.0, 1.0)


def _unit(x: float, y: float, z: float) -> tuple[float, float, float]:
    r = math.sqrt(x * x + y * y + z * z)
    return x / r, y / r, z / r


_KEY = _unit(-0.45, -0.55, -1.0)    # toward the key light, camera frame
_FILL = _unit(0.8, 0.1, -0.6)


def _light(R: torch.Tensor, l: tuple[float, float, float]) -> torch.Tensor:
    """[B,3] = R^T l for R [B,3,3] (world -> camera): the camera-frame direction l in world space."""
    return R[:, 0, :] * l[0] + R[:, 1, :] * l[1] + R[:, 2, :] * l[2]
