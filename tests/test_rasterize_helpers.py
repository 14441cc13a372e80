"""Random scenes for the rasterizer tests (fresh randomness; the autouse fixture seeds torch)."""
from __future__ import annotations

import torch


def make_scene(*args, well_conditioned=False, tweak=None, **kw):
    """A random scene (see _draw_scene); with well_conditioned, one whose blending decisions are
    well conditioned (for float32-vs-float64 comparisons at tight tolerances).

    At a pixel where some Gaussian's alpha sits within 1e-5 (relative) of 1/255, or a transmittance
    within 1e-5 (relative) of the 1e-4 stop, the image is discontinuous in the inputs, and float32 and float64
    may legitimately decide differently (seen once in CI: one pixel off by 2.4e-3). Such draws are
    rejected and drawn again (fresh randomness), so comparisons at 1e-5 test arithmetic, not luck.
    ``tweak(scene)`` edits a draw in place before that check (e.g. needle-thin scales).
    """
    for _ in range(32):  # needle scenes (conics ~1e6) are near a threshold in most draws
        scene = _draw_scene(*args, **kw)
        if tweak is not None:
            tweak(scene)
        if not well_conditioned or not _near_threshold(scene):
            return scene
    raise AssertionError("make_scene: 32 random draws in a row were near a blending threshold")


def threshold_sensitive(scene, rasterize_mode="classic", margin=1e-5) -> torch.Tensor:
    """[(B,)C,H,W] bool: pixels whose float64 reference alpha changes when its blending thresholds
    (alpha 1/255, the 1e-4 transmittance stop) move by +-margin (relative). The image is
    discontinuous in the inputs there, and two float32 renderers may decide differently (seen with
    gsplat: scripts/gsplat_parity_sweep.py found every disagreement beyond 1e-4 at such a pixel)."""
    import ffavatar_kernels.reference.rasterize as R

    s64 = cast(scene, torch.float64)
    a0, t0 = R._ALPHA_T, R._T_EPS
    alphas = []
    try:
        for f in (1 - margin, 1 + margin):
            R._ALPHA_T, R._T_EPS = a0 * f, t0 * f
            alphas.append(R.rasterize(**s64, rasterize_mode=rasterize_mode)[1][..., 0])
    finally:
        R._ALPHA_T, R._T_EPS = a0, t0
    return alphas[0] != alphas[1]


def _near_threshold(scene, margin=1e-5) -> bool:
    """Whether moving the reference's thresholds by +-margin (relative) changes any alpha."""
    if scene["means"].shape[-2] == 0:
        return False
    scene = cast(scene, device="cpu")
    return any(bool(threshold_sensitive(scene, mode, margin).any()) for mode in ("classic", "antialiased"))


def _draw_scene(N=40, C=2, W=37, H=29, D=3, B=None, dtype=torch.float64, device="cpu", per_camera=False,
                spread=0.6, depth=4.0, scale=(0.04, 0.25)):
    """Gaussians in front of C cameras looking down +z (small random rotations and offsets).

    Returns a dict of rasterize arguments: means [(B,)N,3], quats [(B,)N,4], scales [(B,)N,3],
    opacities [(B,)N], colors [(B,)(C,)N,D], viewmats [(B,)C,4,4], Ks [(B,)C,3,3], width, height.
    """
    pre = () if B is None else (B,)
    g = dict(dtype=dtype, device=device)
    means = torch.randn(pre + (N, 3), **g) * spread
    means[..., 2] += depth
    # distinct depths (no ties) for the gradient tests
    means[..., 2] += torch.linspace(-0.3, 0.3, N, **g)[torch.randperm(N, device=device)]
    quats = torch.randn(pre + (N, 4), **g)
    scales = torch.rand(pre + (N, 3), **g) * (scale[1] - scale[0]) + scale[0]
    opacities = torch.rand(pre + (N,), **g) * 0.9 + 0.05
    colors = torch.rand(pre + ((C,) if per_camera else ()) + (N, D), **g)
    ang = (torch.rand(pre + (C, 3), **g) - 0.5) * 0.2
    viewmats = torch.eye(4, **g).expand(pre + (C, 4, 4)).clone()
    viewmats[..., :3, :3] = _euler(ang)
    viewmats[..., :3, 3] = (torch.rand(pre + (C, 3), **g) - 0.5) * 0.3
    f = 1.2 * max(W, H)
    Ks = torch.zeros(pre + (C, 3, 3), **g)
    Ks[..., 0, 0] = f * (1 + 0.1 * torch.rand(pre + (C,), **g))
    Ks[..., 1, 1] = f * (1 + 0.1 * torch.rand(pre + (C,), **g))
    Ks[..., 0, 2] = W / 2 + torch.randn(pre + (C,), **g)
    Ks[..., 1, 2] = H / 2 + torch.randn(pre + (C,), **g)
    Ks[..., 2, 2] = 1
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
                Ks=Ks, width=W, height=H)


def _euler(a):
    cx, cy, cz = torch.cos(a).unbind(-1)
    sx, sy, sz = torch.sin(a).unbind(-1)
    o, z = torch.ones_like(cx), torch.zeros_like(cx)
    Rx = torch.stack([o, z, z, z, cx, -sx, z, sx, cx], -1).reshape(a.shape[:-1] + (3, 3))
    Ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).reshape(a.shape[:-1] + (3, 3))
    Rz = torch.stack([cz, -sz, z, sz, cz, z, z, z, o], -1).reshape(a.shape[:-1] + (3, 3))
    return Rz @ Ry @ Rx


def cast(scene, dtype=None, device=None):
    """Copy of a scene with float tensors cast/moved."""
    out = {}
    for k, v in scene.items():
        out[k] = v.to(dtype=dtype or v.dtype, device=device or v.device).clone() if isinstance(v, torch.Tensor) else v
    return out


def rel(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a, b = a.double().cpu(), b.double().cpu()
    nb = b.norm().item()
    d = (a - b).norm().item()
    return d / nb if nb > 0 else d


DIFF_KEYS = ("means", "quats", "scales", "opacities", "colors")


def run_with_grads(fn, scene, backgrounds=None, seed_grads=None, grad_mask=None, **kw):
    """Render, backprop random upstream gradients (fixed by ``seed_grads``; zero at the pixels where
    ``grad_mask`` [(B,)C,H,W] is False); return outputs and grads."""
    s = {k: (v.detach().clone().requires_grad_(True) if k in DIFF_KEYS else v) for k, v in scene.items()}
    bg = None if backgrounds is None else backgrounds.detach().clone().requires_grad_(True)
    img, alpha, meta = fn(**s, backgrounds=bg, **kw)
    gen = torch.Generator().manual_seed(seed_grads if seed_grads is not None else 0)
    gi = torch.randn(img.shape, generator=gen, dtype=torch.float64).to(img)
    ga = torch.randn(alpha.shape, generator=gen, dtype=torch.float64).to(alpha)
    if grad_mask is not None:
        m = grad_mask.to(img.device)[..., None]
        gi, ga = gi * m, ga * m
    ((img * gi).sum() + (alpha * ga).sum()).backward()
    grads = {k: s[k].grad for k in DIFF_KEYS}
    if bg is not None:
        grads["backgrounds"] = bg.grad
    return img, alpha, meta, grads
