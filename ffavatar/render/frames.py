"""Batched rendering of animation frames: skin the anchored Gaussians of B frames in one call, shade
them, and rasterize the B scenes, each through its own camera ([B,1,4,4] viewmats, [B,1,3,3] Ks)."""
from __future__ import annotations

import torch
from ffavatar_kernels.profiling import nvtx_range

from ..flame import CanonicalGaussians, FlameModel
from .backend import Backend, select_backend
from .shading import shade

__all__ = ["render_frames"]


def render_frames(model: FlameModel, gaussians: CanonicalGaussians, betas: torch.Tensor, pose: torch.Tensor,
                  viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                  backend: Backend | None = None, background=(0.08, 0.09, 0.11),
                  lit: bool = True, lbs_args: tuple | None = None) -> torch.Tensor:
    """Render B animation frames in one batched skinning call and one batched rasterize call.

    Args:
        model: the FLAME-structured head (on the rendering device).
        gaussians: its canonical Gaussians (same device and dtype).
        betas: [B,S] shape + expression coefficients ([B,n_expr] expression coefficients with
            ``lbs_args=model.expression_lbs_args(...)``).
        pose: [B,J*3] axis-angle or [B,J,3,3] rotations.
        viewmats: [B,4,4] world-to-camera, one camera per frame.
        Ks: [B,3,3] or [3,3] intrinsics.
        width, height: image size in pixels.
        backend: from :func:`select_backend` (default: chosen for the device).
        background: RGB background color.
        lit: shade with the camera-attached lights (else the raw albedo).
        lbs_args: the model tensors skinning uses (default ``model.lbs_args()``). For the
            expression-only fast path of a fixed avatar shape pass
            ``model.expression_lbs_args(betas_shape)`` (computed once per shape) with betas = the
            expression coefficients: the kernels then read n_expr directions instead of S. It is
            explicit because detecting a shared shape in CUDA betas would cost a host sync per call.

    Returns:
        [B,H,W,3] images in [0,1].
    """
    if betas.dim() != 2:
        raise ValueError(f"render_frames: betas expected shape [B,S], got {list(betas.shape)}")
    B = betas.shape[0]
    if viewmats.shape != (B, 4, 4):
        raise ValueError(f"render_frames: viewmats expected shape [{B},4,4], got {list(viewmats.shape)}")
    if Ks.dim() == 2:
        Ks = Ks.expand(B, 3, 3)
    if Ks.shape != (B, 3, 3):
        raise ValueError(f"render_frames: Ks expected shape [3,3] or [{B},3,3], got {list(Ks.shape)}")
    if lbs_args is None:
        lbs_args = model.lbs_args()
    elif not (isinstance(lbs_args, (tuple, list)) and len(lbs_args) == 6 and isinstance(lbs_args[1], torch.Tensor)
              and lbs_args[1].dim() == 3):
        raise TypeError("render_frames: lbs_args expected the 6-tuple of model.lbs_args() or "
                        "model.expression_lbs_args(...) (shapedirs [V,3,S] second)")
    S = lbs_args[1].shape[-1]  # shapedirs [V,3,S]
    if betas.shape[1] != S:
        raise ValueError(f"render_frames: betas expected shape [B,{S}] (the directions of lbs_args' shapedirs), "
                         f"got {list(betas.shape)}")
    dev, dt = model.device, model.dtype
    if B == 0:
        return torch.empty(0, height, width, 3, dtype=dt, device=dev)
    backend = backend or select_backend(dev)
    g = gaussians
    with nvtx_range("ffavatar.render.skin"):
        means, quats = backend.skin_gaussians(betas, pose, *lbs_args, g.anchor_idx, g.anchor_weights, None,
                                              g.quats)
    N = g.num_gaussians
    with nvtx_range("ffavatar.render.shade"):
        colors = shade(g.colors, quats, viewmats) if lit else g.colors.expand(B, N, 3)
    scales = g.scales.expand(B, N, 3).contiguous()
    opac = g.opacities.expand(B, N).contiguous()
    bg = torch.tensor(background, dtype=dt, device=dev).expand(B, 1, 3).contiguous()
    return backend.render_scenes(means, quats, scales, opac, colors, viewmats, Ks, width, height, bg)
