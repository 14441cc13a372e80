"""One launch of each hot kernel, for ncu (LBS B=1 fwd, LBS B=16 fwd+bwd, rasterizer 1 camera fwd+bwd;
with the argument raster8: the rasterizer's 8-camera forward only).

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section Occupancy \
        -k regex:"render|vertices|gaussians|joints" python scripts/ncu_targets.py
"""
import importlib
import sys

import torch

import ffavatar_kernels as fk
import _paths  # noqa: F401  (repository root on sys.path)
from benchmarks.scenes import head_scene

V, J, S, P, N = 5023, 5, 400, 36, 81424


def lbs(B: int, backward: bool) -> None:
    F = importlib.import_module("ffavatar_kernels.flame_lbs")
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.rand(*s, device="cuda", generator=g)  # noqa: E731
    W = r(V, J) ** 4
    Jr = r(J, V)
    model = [r(V, 3) * 0.1, (r(V, 3, S) - 0.5) * 1e-3, (r(P, V * 3) - 0.5) * 1e-2, Jr / Jr.sum(1, keepdim=True),
             torch.tensor([-1, 0, 1, 1, 1]), W / W.sum(1, keepdim=True)]
    idx = torch.randint(0, V, (N, 4), device="cuda", dtype=torch.int32, generator=g)
    aw = r(N, 4) + 0.05
    aw = aw / aw.sum(1, keepdim=True)
    b, p, o, q = (r(B, S) - 0.5, (r(B, J * 3) - 0.5) * 0.6, r(N, 3) * 1e-2, r(N, 4))
    if backward:
        b, p, o, q = (t.requires_grad_() for t in (b, p, o, q))
    means, quats = F.skin_gaussians(b, p, *model, idx, aw, o, q)
    if backward:
        torch.autograd.grad((means * means).sum() + (quats * quats).sum(), [b, p, o, q])


def raster(C: int = 1, backward: bool = True) -> None:
    s = head_scene(C=C, size=512)
    t = {k: (v.detach().requires_grad_(backward) if k in ("means", "quats", "scales", "opacities", "colors") else v)
         for k, v in s.items()}
    img, alpha, _ = fk.rasterize(**t)
    if backward:
        (img.sum() + alpha.sum()).backward()


if __name__ == "__main__":
    if sys.argv[1:] == ["raster8"]:  # the 8-camera forward only
        raster(8, False)
    else:
        lbs(1, False)
        lbs(16, True)
        raster()
    torch.cuda.synchronize()
