"""Which kernels render: the compiled ops of ``ffavatar_kernels`` when the extension has kernels for
the device, else the pure-PyTorch reference twins. The reference rasterizer blends densely (pixels x
Gaussians), so that path uses the tiled reference (``reference.rasterize.rasterize_tiled``): the same
image at a cost proportional to the actual overlap."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from ffavatar_kernels.profiling import nvtx_range

__all__ = ["Backend", "select_backend"]


@dataclasses.dataclass
class Backend:
    """The skinning and rasterization functions used for rendering, and a description.

    ``rasterize`` takes ``rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width,
    height, backgrounds)`` positionally with one camera per scene; with ``tiled_reference`` it is
    the tiled reference (returns colors, alphas), else the kernel op (colors, alphas, meta).
    """

    skin_gaussians: Callable
    rasterize: Callable
    description: str
    tiled_reference: bool = False

    def render_scenes(self, means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                      backgrounds) -> torch.Tensor:
        """B scenes, one camera each, through ``rasterize`` (either kind) -> [B,H,W,3] in [0,1].

        Args:
            means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N], colors [B,N,3]: activated
            Gaussians; viewmats [B,4,4]; Ks [B,3,3]; backgrounds [B,1,3].
        """
        vm, K = viewmats[:, None].contiguous(), Ks[:, None].contiguous()           # one camera per scene
        with nvtx_range("ffavatar.render.rasterize"):
            if self.tiled_reference:
                img, _ = self.rasterize(means, quats, scales, opacities, colors.contiguous(), vm, K, width, height,
                                        backgrounds)
            else:
                img, _, _ = self.rasterize(means, quats, scales, opacities, colors.contiguous(), vm, K, width,
                                           height, backgrounds=backgrounds)
        return img[:, 0].clamp(0.0, 1.0)


def select_backend(device: "torch.device | str" = "cpu", prefer: str = "auto") -> Backend:
    """Pick the compiled ops when available for ``device``, else the reference twins.

    Args:
        device: where rendering runs ("cpu" or "cuda").
        prefer: "auto" (compiled when available), "compiled" (error if missing) or "reference".

    Returns:
        A :class:`Backend`; ``description`` says which path each op takes.
    """
    if prefer not in ("auto", "compiled", "reference"):
        raise ValueError(f"select_backend: prefer must be 'auto', 'compiled' or 'reference', got {prefer!r}")
    import ffavatar_kernels as fk
    from ffavatar_kernels.reference import flame_lbs as ref_lbs
    from ffavatar_kernels.reference import rasterize as ref_rast

    dev = torch.device(device)
    use = prefer != "reference"
    lbs_ok = use and fk.has_kernel("skin_gaussians", dev)
    rast_ok = use and fk.has_kernel("rasterize", dev)
    if prefer == "compiled" and not (lbs_ok and rast_ok):
        missing = "skin_gaussians" if not lbs_ok else "rasterize"
        raise RuntimeError(f"select_backend: prefer='compiled', but the compiled library has no {dev.type} "
                           f"kernels for {missing} ({fk.build_info().get('error') or 'built without them'})")
    kind = "compiled CUDA" if dev.type == "cuda" else "compiled C++ CPU"
    desc = (f"skin_gaussians: {kind if lbs_ok else 'PyTorch reference'}, "
            f"rasterize: {kind if rast_ok else 'PyTorch reference (tiled)'}")
    return Backend(skin_gaussians=fk.skin_gaussians if lbs_ok else ref_lbs.skin_gaussians,
                   rasterize=fk.rasterize if rast_ok else ref_rast.rasterize_tiled,
                   description=desc, tiled_reference=not rast_ok)
