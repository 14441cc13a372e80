"""Where ours and gsplat 1.5.3 disagree on random scenes, and whether it is a blending-threshold flip.

For each seed: the scene of tests/test_rasterize_cuda.py::test_vs_gsplat_random (float32, CUDA, not
filtered), rendered by both in every render/rasterize mode. Pixels off by more than 1e-4 are then
checked against the float64 reference: a pixel is "threshold-sensitive at m" when moving the
reference's blending thresholds (alpha 1/255 and the 1e-4 transmittance stop) by +-m (relative)
changes its alpha (tests' threshold_sensitive, the rule the parity test uses; the sweep recorded in
notes/rasterize.md ran an image-based version of it, ab862b4), i.e. the image is discontinuous in the inputs there and two float32 implementations may
decide differently. For each bad pixel it also prints which of the two is nearer the float64 image.

Usage: PYTHONPATH=<gsplat> python scripts/gsplat_parity_sweep.py [n_seeds] [first_seed]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import gsplat  # noqa: E402
from test_rasterize_helpers import cast, make_scene, threshold_sensitive  # noqa: E402

import ffavatar_kernels.reference.rasterize as R  # noqa: E402
from ffavatar_kernels import rasterize  # noqa: E402

MODES = [("RGB", "classic"), ("RGB", "antialiased"), ("ED", "classic"), ("RGB+ED", "antialiased")]
MARGINS = (1e-6, 1e-5, 1e-4, 1e-3)


def _ref(s64, mode, rmode):
    return R.rasterize(**s64, render_mode=mode, rasterize_mode=rmode)[0]


def main(n: int, first: int) -> None:
    counts = {"scenes": 0, "bad": 0, "bad_pixels": 0, **{f"sensitive@{m:g}": 0 for m in MARGINS}}
    for seed in range(first, first + n):
        torch.manual_seed(seed)
        s = make_scene(N=3000, C=3, W=96, H=80, D=3, spread=0.7, dtype=torch.float32, device="cuda")
        for mode, rmode in MODES:
            counts["scenes"] += 1
            ours = rasterize(**s, render_mode=mode, rasterize_mode=rmode)[0]
            theirs = gsplat.rasterization(**s, render_mode=mode, rasterize_mode=rmode, packed=False)[0]
            tol = torch.full((ours.shape[-1],), 1e-4, device="cuda")
            if mode != "RGB":  # the depth channel: relative to the scene's depth
                tol[-1] = 1e-4 * s["means"][..., 2].abs().max()
            bad = ((ours - theirs).abs() > tol).any(-1)  # [C,H,W]
            if not bad.any():
                continue
            counts["bad"] += 1
            counts["bad_pixels"] += int(bad.sum())
            s64 = cast(s, torch.float64)
            ref = _ref(s64, mode, rmode)
            sens = {}
            for m in MARGINS:  # the test's rule (alpha changes when the thresholds move by +-m)
                sens[m] = threshold_sensitive(s64, rmode, m)
                counts[f"sensitive@{m:g}"] += int((bad & sens[m]).sum())
            for c, y, x in bad.nonzero().tolist():
                d_ours = (ours[c, y, x].double() - ref[c, y, x]).abs().max().item()
                d_theirs = (theirs[c, y, x].double() - ref[c, y, x]).abs().max().item()
                diff = (ours[c, y, x] - theirs[c, y, x]).abs().max().item()
                smallest = next((f"{m:g}" for m in MARGINS if sens[m][c, y, x]), "none")
                print(f"seed {seed} {mode}/{rmode} cam {c} px ({x},{y}): |ours-gsplat| {diff:.2e}, "
                      f"|ours-ref64| {d_ours:.2e}, |gsplat-ref64| {d_theirs:.2e}, sensitive at {smallest}")
    print("summary:", counts)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
