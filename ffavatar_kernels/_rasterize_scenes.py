"""Scenes for rasterizer tests and benchmarks: the ~80K-Gaussian synthetic head seen by orbit cameras.

Uses the model layer (``ffavatar.synthetic.synthetic_head`` + ``ffavatar.gaussians``) when it is
importable, else a head-sized blob of 81,424 Gaussians on an ellipsoid surface.
"""
from __future__ import annotations

import math

import torch


def _blob(n: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    means = d * torch.tensor([0.08, 0.11, 0.095])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.003 + 0.0015
    scales[:, 2] *= 0.15
    opacities = torch.rand(n, generator=g) * 0.3 + 0.65
    colors = torch.rand(n, 3, generator=g) * 0.4 + torch.tensor([0.55, 0.4, 0.35])
    return [t.to(device=device, dtype=dtype) for t in (means, quats, scales, opacities, colors)]


def _look_at_z(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # world-to-camera (OpenCV: x right, y down, z forward)
    f = target - eye
    f = f / f.norm()
    up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype)
    r = torch.linalg.cross(f, up)
    r = r / r.norm()
    u = torch.linalg.cross(f, r)
    R = torch.stack([r, u, f])
    M = torch.eye(4, dtype=eye.dtype)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def head_scene(C: int = 1, size: int = 512, device="cuda", dtype=torch.float32, B: "int | None" = None) -> dict:
    """rasterize() arguments for the synthetic head: means [N,3] ... viewmats [C,4,4], Ks [C,3,3]
    (with ``B``: the same head repeated as B scenes, means [B,N,3], viewmats [B,C,4,4])."""
    try:
        from ffavatar.camera import intrinsics, orbit
        from ffavatar.gaussians import canonical_gaussians
        from ffavatar.synthetic import synthetic_head

        g = canonical_gaussians(synthetic_head())
        means, quats, scales, opac, colors = (t.to(device=device, dtype=dtype) for t in
                                               (g.means, g.quats, g.scales, g.opacities, g.colors))
        viewmats = orbit(C).to(device=device, dtype=dtype)
        K = intrinsics(size, size).to(device=device, dtype=dtype)
    except ImportError:
        means, quats, scales, opac, colors = _blob(81424, device, dtype)
        vms = []
        for c in range(C):
            a = 2 * math.pi * c / max(C, 1) * 0.25 - 0.4
            eye = torch.tensor([0.75 * math.sin(a), 0.0, -0.75 * math.cos(a)], dtype=torch.float64)
            vms.append(_look_at_z(eye, torch.zeros(3, dtype=torch.float64)))
        viewmats = torch.stack(vms).to(device=device, dtype=dtype)
        f = 0.5 * size / math.tan(math.radians(10.0))
        K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], device=device, dtype=dtype)
    Ks = K.expand(C, 3, 3).contiguous()
    out = dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmats=viewmats, Ks=Ks,
               width=size, height=size)
    if B is not None:
        for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"):
            out[k] = out[k].expand((B,) + out[k].shape).contiguous()
    return out
