"""Pinhole cameras in the OpenCV / gsplat convention: x right, y down, z forward (into the scene).

``viewmats`` are world-to-camera [...,4,4] matrices and ``Ks`` intrinsics [...,3,3], as
``ffavatar_kernels.rasterize`` takes them.
"""
from __future__ import annotations

import math

import torch

__all__ = ["look_at", "intrinsics", "orbit"]


def look_at(eye: torch.Tensor, target: torch.Tensor, up: "torch.Tensor | None" = None) -> torch.Tensor:
    """World-to-camera matrices of cameras at ``eye`` looking at ``target``.

    Args:
        eye: [...,3] camera centers.
        target: [...,3] points looked at (broadcast against eye).
        up: [...,3] world up direction (default +y); must not be parallel to the viewing direction.

    Returns:
        [...,4,4] world-to-camera matrices (x right, y down, z toward the target).
    """
    eye, target = torch.broadcast_tensors(eye, target)
    if eye.shape[-1] != 3:
        raise ValueError(f"look_at: eye/target expected shape [...,3], got {list(eye.shape)}")
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device)
    up = up.to(eye.dtype).expand_as(eye)
    fwd = target - eye
    fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    right = torch.linalg.cross(fwd, up)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    down = torch.linalg.cross(fwd, right)
    R = torch.stack([right, down, fwd], -2)                         # rows: camera axes in world
    t = -(R @ eye[..., None])[..., 0]
    M = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    M[..., :3, :3] = R
    M[..., :3, 3] = t
    M[..., 3, 3] = 1.0
    return M


def intrinsics(width: int, height: int, fov_y_deg: float = 20.0, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """[3,3] pinhole intrinsics with vertical field of view ``fov_y_deg``, principal point at the center."""
    if width <= 0 or height <= 0:
        raise ValueError(f"intrinsics: width and height must be > 0, got {width}x{height}")
    if not 0.0 < fov_y_deg < 180.0:
        raise ValueError(f"intrinsics: fov_y_deg must be in (0,180), got {fov_y_deg}")
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def orbit(num: int, *, radius: float = 0.75, target=(0.0, -0.02, 0.0), azimuth_deg: float = 35.0,
          elevation_deg: float = 8.0, bob_deg: float = 5.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """``num`` world-to-camera matrices [num,4,4] swinging around the head.

    The camera moves on a sphere of ``radius`` around ``target``: azimuth oscillates in
    [-azimuth_deg, azimuth_deg] (one full swing over the sequence), elevation around
    ``elevation_deg`` by +-``bob_deg``; azimuth 0 looks at the face (+z side).
    """
    if num < 0:
        raise ValueError(f"orbit: num must be >= 0, got {num}")
    s = torch.arange(num, dtype=torch.float64) / max(num, 1)
    az = torch.deg2rad(torch.tensor(azimuth_deg, dtype=torch.float64)) * torch.sin(2 * math.pi * s)
    el = torch.deg2rad(elevation_deg + bob_deg * torch.sin(4 * math.pi * s))
    tgt = torch.tensor(target, dtype=torch.float64)
    eye = tgt + radius * torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    return look_at(eye, tgt.expand_as(eye)).to(dtype=dtype, device=device)
