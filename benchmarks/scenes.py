"""Scenes for rasterizer benchmarks, profiling scripts and the GPU tests: the ~80K-Gaussian synthetic
head (``ffavatar.flame``) seen by orbit cameras."""
from __future__ import annotations

import torch

from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, orbit


def head_scene(C: int = 1, size: int = 512, device="cuda", dtype=torch.float32, B: "int | None" = None) -> dict:
    """rasterize() arguments for the synthetic head: means [N,3] ... viewmats [C,4,4], Ks [C,3,3]
    (with ``B``: the same head repeated as B scenes, means [B,N,3], viewmats [B,C,4,4])."""
    g = canonical_gaussians(synthetic_head())
    means, quats, scales, opac, colors = (t.to(device=device, dtype=dtype) for t in
                                           (g.means, g.quats, g.scales, g.opacities, g.colors))
    viewmats = orbit(C).to(device=device, dtype=dtype)
    K = intrinsics(size, size).to(device=device, dtype=dtype)
    Ks = K.expand(C, 3, 3).contiguous()
    out = dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, viewmats=viewmats, Ks=Ks,
               width=size, height=size)
    if B is not None:
        for k in ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"):
            out[k] = out[k].expand((B,) + out[k].shape).contiguous()
    return out
