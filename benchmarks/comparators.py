"""What users would use instead of our kernels, as :class:`ffavatar.render.Backend` objects the model
layer accepts: gsplat's rasterizer (with our skinning or the plain-PyTorch reference LBS)."""
from __future__ import annotations

import pytest


def gsplat_backend(torch_lbs: bool) -> "object":
    """A Backend rendering with ``gsplat.rasterization``; skinning by the PyTorch reference
    (``torch_lbs``) or our ``skin_gaussians``. Skips the test when gsplat is not installed."""
    gsplat = pytest.importorskip("gsplat")
    import ffavatar_kernels as fk
    from ffavatar.render import Backend
    from ffavatar_kernels.reference import flame_lbs as ref_lbs

    def rast(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds=None):
        # Background composited here: gsplat 1.5.3 rejects [B,C,D] backgrounds with batched scenes.
        img, alpha, meta = gsplat.rasterization(means, quats, scales, opacities, colors, viewmats, Ks,
                                                width, height)
        if backgrounds is not None:
            img = img + (1 - alpha) * backgrounds[..., None, None, :]
        return img, alpha, meta
    skin = ref_lbs.skin_gaussians if torch_lbs else fk.skin_gaussians
    return Backend(skin_gaussians=skin, rasterize=rast,
                   description=f"skin_gaussians: {'PyTorch reference' if torch_lbs else 'ours'}, rasterize: gsplat")
