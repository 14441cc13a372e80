"""Float32 vs float64 gradient errors of the split-tile test scene (tests/test_rasterize_cuda.py
_heavy_scene), with tiles split and with FFAVATAR_NO_SPLIT=1, RGB and RGB+ED, a few seeds: shows
whether an error comes from the split. Run from the repository root on a GPU:
python scripts/diag_split_grads.py"""
import os, sys, torch
sys.path.insert(0, "tests")
import test_rasterize_cuda as T
from test_rasterize_helpers import run_with_grads, cast, rel, threshold_sensitive
from ffavatar_kernels.rasterize import rasterize
from ffavatar_kernels.reference.rasterize import rasterize as R
for seed in (105038038, 1485743954, 1, 2):
    torch.manual_seed(seed)
    s = T._heavy_scene(B=2, D=3)
    T._split_plan(s)
    bg = T._bg(s, "RGB+ED")
    keep = ~threshold_sensitive(s, "classic", margin=1e-4)
    for mode in ("RGB+ED", "RGB"):
        b = bg if mode == "RGB+ED" else bg[..., :3]
        ref = run_with_grads(R, s, b, grad_mask=keep, render_mode=mode)
        f = cast(s, torch.float32, "cuda")
        for ns in ("0", "1"):
            os.environ["FFAVATAR_NO_SPLIT"] = ns
            o = run_with_grads(rasterize, f, b.float().cuda(), grad_mask=keep, render_mode=mode)
            print(seed, mode, "split" if ns == "0" else "whole", {k: f"{rel(o[3][k], ref[3][k]):.2e}" for k in ref[3] if ref[3][k] is not None}, flush=True)
