"""Personalization quality and speed on the synthetic head (issue 17, item 4 / "What it must show").

The mean-head avatar (the synthetic head's canonical Gaussians, zero shape) is personalized to a new
synthetic identity (random shape coefficients ~ N(0, shape_std^2) on the first ``--n-shape``, the
colours tinted and shifted) from ``--views`` input views (``--size`` pixels square, each with its own
expression and jaw / neck pose), ``--steps`` steps, fitting the residuals and the first
``--refine-shape`` shape coefficients (0: residuals only). Reported:

- the curve: PSNR (dB, mean over views, whole image incl. the black background) on ``--heldout``
  held-out views with held-out expressions every ``--eval-every`` steps, and the training loss;
- the wall time of the steps: a second, identical run without evaluations or progress bar, CUDA
  synchronized before and after (the first run is its warm-up); targets: >= 30 dB, <= 1.0 s for 500
  steps of 4 views at 512x512.

Usage:
    python scripts/personalize_synthetic.py                          # GPU: 512x512, 500 steps, ~80K Gaussians
    python scripts/personalize_synthetic.py --size 64 --steps 20     # CPU smoke test
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import _paths  # noqa: F401  (repository root on sys.path)
from ffavatar.avatar import Avatar
from ffavatar.avatar.personalize import Views, personalize
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, look_at
from ffavatar.render import select_backend

N_EXPR = 20          # expression components drawn (the rest zero)


def cameras(azimuths_deg, elevations_deg, radius: float, device) -> torch.Tensor:
    az = torch.deg2rad(torch.tensor(azimuths_deg, dtype=torch.float64))
    el = torch.deg2rad(torch.tensor(elevations_deg, dtype=torch.float64))
    tgt = torch.tensor([0.0, -0.02, 0.0], dtype=torch.float64)
    eye = tgt + radius * torch.stack([torch.cos(el) * torch.sin(az), -torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    return look_at(eye, tgt.expand_as(eye)).float().to(device)


def frames(n: int, m, g: torch.Generator, device):
    """n expressions [n,N_EXPR] and poses [n,J*3] (neck and jaw; the jaw opens only)."""
    expr = 0.6 * torch.randn(n, N_EXPR, generator=g)
    pose = torch.zeros(n, m.num_joints, 3)
    pose[:, 1] = 0.08 * torch.randn(n, 3, generator=g)              # neck
    pose[:, 2, 0] = 0.15 * torch.rand(n, generator=g)                # jaw
    return expr.to(device), pose.reshape(n, -1).to(device)


def identity(mean: Avatar, m, args, g: torch.Generator) -> Avatar:
    """A new person: random shape, the colours tinted (per channel) and shifted, a little per-Gaussian noise."""
    dev = mean.device
    shape = torch.zeros(m.n_shape)
    shape[:args.n_shape] = args.shape_std * torch.randn(args.n_shape, generator=g)
    tint = 1 + 0.08 * (2 * torch.rand(3, generator=g) - 1)
    shift = 0.05 * (2 * torch.rand(3, generator=g) - 1)
    noise = 0.02 * torch.randn(mean.num_gaussians, 3, generator=g)
    t = Avatar.from_canonical(m, canonical_gaussians(m, args.levels))
    t.betas_shape = shape.to(dev)
    t.colors = (mean.colors * tint.to(dev) + shift.to(dev) + noise.to(dev)).clamp(0, 1)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="image width = height (pixels)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--views", type=int, default=4, help="input views per step")
    ap.add_argument("--heldout", type=int, default=4, help="held-out views (other cameras and expressions)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--levels", type=int, default=2, help="subdivision levels of the Gaussians (2: ~80K)")
    ap.add_argument("--shape-std", type=float, default=0.6, help="std of the identity's shape coefficients")
    ap.add_argument("--n-shape", type=int, default=16, help="shape coefficients drawn")
    ap.add_argument("--lr", type=float, default=1.0, help="factor on personalize's DEFAULT_LR")
    ap.add_argument("--refine-expression", action="store_true")
    ap.add_argument("--refine-shape", type=int, default=50,
                    help="leading shape coefficients fitted with the residuals (0: residuals only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-timing", action="store_true", help="skip the second (timed) run")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    m = synthetic_head(device=dev)
    mean = Avatar.from_canonical(m, canonical_gaussians(m, args.levels))
    target = identity(mean, m, args, g)
    K = intrinsics(args.size, args.size, 22.0, device=dev)
    V, Hn = args.views, args.heldout
    spread = lambda n, lo, hi: [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]  # noqa: E731
    vm = cameras(spread(V, -40, 40), [5.0 * (-1) ** i for i in range(V)], 0.75, dev)
    vm_h = cameras(spread(Hn, -30, 50), [-8.0 + 4 * i for i in range(Hn)], 0.75, dev)
    expr, pose = frames(V, m, g, dev)
    expr_h, pose_h = frames(Hn, m, g, dev)
    with torch.no_grad():
        images = target.render(m, vm, K, args.size, args.size, expr, pose)
        images_h = target.render(m, vm_h, K, args.size, args.size, expr_h, pose_h)
    held = Views(images_h, vm_h, K, expr_h, pose_h)
    backend = select_backend(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {backend.description}")
    print(f"avatar: {mean.num_gaussians:,} Gaussians (levels {args.levels}); identity: shape std {args.shape_std} "
          f"on {args.n_shape} coefficients, colour tint/shift; {V} input views, {Hn} held-out views "
          f"(other cameras, expressions, poses), {args.size}x{args.size}, {args.steps} steps; fitted: residuals"
          f"{f' + {args.refine_shape} shape coefficients' if args.refine_shape else ''}"
          f"{' + per-view expressions' if args.refine_expression else ''}")

    kw = dict(steps=args.steps, lr=args.lr, refine_expression=args.refine_expression,
              refine_shape=args.refine_shape, backend=backend)
    t0 = time.perf_counter()
    fitted, hist = personalize(mean, m, images, vm, K, expr, pose, progress=not args.no_progress,
                               eval_views=held, eval_every=args.eval_every, **kw)
    first_s = time.perf_counter() - t0
    loss_at = dict(hist.loss)
    print("\n| step | held-out PSNR (dB) | train loss |")
    print("|---:|---:|---:|")
    for step, db in hist.psnr:
        loss = f"{loss_at[step]:.5f}" if step in loss_at else "-"
        print(f"| {step} | {db:.2f} | {loss} |")
    print(f"\nrun 1 (with evaluations): {first_s:.2f} s wall, steps alone {hist.train_s:.3f} s")

    final = hist.psnr[-1][1]
    line = (f"held-out PSNR {hist.psnr[0][1]:.2f} -> {final:.2f} dB "
            f"(target >= 30: {'met' if final >= 30 else 'NOT met'})")
    if not args.no_timing:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        _, h2 = personalize(mean, m, images, vm, K, expr, pose, progress=False, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
        per = 1e3 * wall / args.steps
        est500 = per * 500 / 1e3
        target_note = ""
        if args.size == 512 and V == 4:
            target_note = f" (target <= 1.0 s for 500: {'met' if est500 <= 1.0 else 'NOT met'})"
        print(f"run 2 (timed, no evaluations, no bar): {args.steps} steps in {wall:.3f} s wall "
              f"({per:.2f} ms/step, {est500:.2f} s per 500 steps){target_note}; final loss {h2.loss[-1][1]:.5f}")
    print(line)
    if not math.isfinite(final):
        raise SystemExit("personalize_synthetic: PSNR is not finite")


if __name__ == "__main__":
    main()
