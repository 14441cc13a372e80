"""Long runs and big renders (RELIABILITY.md, issue 19 item 5): no memory growth, clear OOM errors.

1. ``--frames`` animation frames of the mean-head avatar through the AnimationEngine (a CUDA graph on
   the GPU), new random expressions / poses / cameras every batch; allocated memory after the first
   batch and at the end, the peak, the number of graph captures.
2. ``--steps`` personalization steps (4 views); the peak memory of the long run against a 50-step
   run (growth inside the loop would raise it), allocated memory before and after.
3. A ``--big`` x ``--big`` render of the head, and a render of ``--many`` random Gaussians at 1024x1024:
   each succeeds (its time and peak memory are printed) or fails with the out-of-memory message
   naming the size.

Usage:
    python scripts/long_runs.py                                   # GPU: 100,000 frames, 5,000 steps
    python scripts/long_runs.py --device cpu --frames 64 --steps 60 --big 512 --many 20000   # smoke
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import _paths  # noqa: F401  (repository root on sys.path)
import ffavatar_kernels as fk
from ffavatar.avatar import AnimationEngine, Avatar
from ffavatar.avatar.personalize import personalize
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, look_at


def mem(dev) -> dict:
    """Allocated and peak bytes (CUDA), or {} on the CPU (no allocator statistics)."""
    if dev.type != "cuda":
        return {}
    torch.cuda.synchronize(dev)
    return {"allocated_MiB": torch.cuda.memory_allocated(dev) / 2**20,
            "peak_MiB": torch.cuda.max_memory_allocated(dev) / 2**20}


def reset_peak(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def cameras(n: int, g: torch.Generator, dev) -> torch.Tensor:
    az = (torch.rand(n, generator=g) - 0.5) * 1.6
    r = 0.6 + 0.3 * torch.rand(n, generator=g)
    eyes = torch.stack([r * az.sin(), 0.05 * torch.randn(n, generator=g), r * az.cos()], -1)
    return look_at(eyes, torch.tensor([0.0, -0.02, 0.0]).expand(n, 3)).to(dev)


def motion(n: int, m, g: torch.Generator, dev):
    expr = 0.7 * torch.randn(n, m.n_expr, generator=g)
    pose = 0.1 * torch.randn(n, m.num_joints, 3, generator=g)
    pose[:, 2, 0] = 0.25 * torch.rand(n, generator=g)
    return expr.to(dev), pose.reshape(n, -1).to(dev)


def animation(avatar, m, args, dev, g) -> dict:
    eng = AnimationEngine(avatar, m, args.size, args.size, batch=args.batch, lit=True)
    t0, first = time.perf_counter(), None
    done = 0
    while done < args.frames:
        n = min(args.batch, args.frames - done)
        expr, pose = motion(n, m, g, dev)
        img = eng.render(expr, pose, viewmats=cameras(n, g, dev), copy=False)
        if first is None:
            first = mem(dev)
            reset_peak(dev)
            t0 = time.perf_counter()
        done += n
    if not bool(torch.isfinite(img).all()):
        raise RuntimeError("animation: non-finite frame")
    end = mem(dev)
    wall = time.perf_counter() - t0
    return {"frames": done, "batch": args.batch, "size": args.size, "graph": eng.uses_graph,
            "captures": eng.captures, "fps_after_first_batch": (done - min(args.batch, done)) / max(wall, 1e-9),
            "after_first_batch": first, "end": end}


def personalization(avatar, m, args, dev, g) -> dict:
    size, V = args.pers_size, 4
    vm = cameras(V, g, dev)
    K = intrinsics(size, size, 22.0, device=dev)
    expr, pose = motion(V, m, g, dev)
    target = avatar.detach()
    target.colors = (target.colors * 0.9 + 0.05).clamp(0, 1)
    with torch.no_grad():
        images = target.render(m, vm, K, size, size, expr, pose)
    out = {}
    for steps in (50, args.steps):
        reset_peak(dev)
        before = mem(dev)
        t0 = time.perf_counter()
        res, hist = personalize(avatar, m, images, vm, K, expression=expr, pose=pose, steps=steps, progress=False)
        wall = time.perf_counter() - t0
        del res
        out[f"steps_{steps}"] = {"before": before, "after": mem(dev), "wall_s": wall,
                                 "last_loss": hist.loss[-1][1], "first_loss": hist.loss[0][1]}
    return out


def attempt(name: str, fn, dev) -> dict:
    reset_peak(dev)
    t0 = time.perf_counter()
    try:
        desc = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return {"ok": True, "what": desc, "wall_s": time.perf_counter() - t0, **mem(dev)}
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--pers-size", type=int, default=256)
    ap.add_argument("--big", type=int, default=4096)
    ap.add_argument("--many", type=int, default=2_000_000)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: animation,personalize,big,many")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    m = synthetic_head(device=dev)
    avatar = Avatar.from_canonical(m, canonical_gaussians(m))
    skip = set(filter(None, args.skip.split(",")))
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "gaussians": avatar.num_gaussians}
    if "animation" not in skip:
        report["animation"] = animation(avatar, m, args, dev, g)
        print("animation:", json.dumps(report["animation"]), flush=True)
    if "personalize" not in skip:
        report["personalize"] = personalization(avatar, m, args, dev, g)
        print("personalize:", json.dumps(report["personalize"]), flush=True)
    if "big" not in skip:
        vm, K = cameras(1, g, dev)[0], intrinsics(args.big, args.big, 22.0, device=dev)

        def big():
            with torch.no_grad():
                img = avatar.render(m, vm, K, args.big, args.big)
            return f"{args.big}x{args.big} head, mean {img.mean().item():.3f}"
        report["big_render"] = attempt("big", big, dev)
        print("big render:", json.dumps(report["big_render"]), flush=True)
    if "many" not in skip:
        def many():
            N = args.many
            gen = torch.Generator(device=dev).manual_seed(1)
            means = torch.randn(N, 3, generator=gen, device=dev) * 0.3
            means[:, 2] += 3.0
            quats = torch.randn(N, 4, generator=gen, device=dev)
            scales = torch.rand(N, 3, generator=gen, device=dev) * 0.01 + 0.002
            opac = torch.rand(N, generator=gen, device=dev)
            cols = torch.rand(N, 3, generator=gen, device=dev)
            vm = torch.eye(4, device=dev)[None]
            Kc = intrinsics(1024, 1024, 40.0, device=dev)[None]
            with torch.no_grad():
                img, _, meta = fk.rasterize(means, quats, scales, opac, cols, vm, Kc, 1024, 1024)
            return f"{N} Gaussians at 1024x1024, {meta['n_isects']} intersections, mean {img.mean().item():.3f}"
        report["many_render"] = attempt("many", many, dev)
        print("many render:", json.dumps(report["many_render"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
