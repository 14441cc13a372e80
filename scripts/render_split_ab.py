"""Split tiles on / off (FFAVATAR_NO_SPLIT=1) in one process: device time of the blending kernels
(torch.profiler, fwd+bwd) and wall time per call, 81K head at 512x512, 1 and 8 cameras.
Usage: python scripts/render_split_ab.py [rounds]"""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import ffavatar_kernels as fk
import _paths  # noqa: F401  (repository root on sys.path)
from benchmarks.scenes import head_scene

KEYS = ("means", "quats", "scales", "opacities", "colors")


def call(s, backward):
    t = {k: (v.detach().requires_grad_(backward) if k in KEYS else v) for k, v in s.items()}
    img, alpha, _ = fk.rasterize(**t)
    if backward:
        (img.sum() + alpha.sum()).backward()


def wall_ms(s, backward, iters=30):
    for _ in range(5):
        call(s, backward)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        call(s, backward)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters


def kernel_us(s, iters=20):
    for _ in range(3):
        call(s, True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call(s, True)
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        name = e.key
        for tag in ("render_fwd", "render_bwd", "split_plan"):
            if tag in name:
                out[tag] = out.get(tag, 0.0) + e.device_time_total / iters
    return out


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print("| cameras | split | render_fwd µs | render_bwd µs | split_plan µs | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|")
    for C in (1, 8):
        s = head_scene(C=C, size=512)
        for r in range(rounds):
            for split in (True, False):
                if split:
                    os.environ.pop("FFAVATAR_NO_SPLIT", None)
                else:
                    os.environ["FFAVATAR_NO_SPLIT"] = "1"
                k = kernel_us(s)
                f, fb = wall_ms(s, False), wall_ms(s, True)
                print(f"| {C} | {'on' if split else 'off'} | {k.get('render_fwd', 0):.1f} | {k.get('render_bwd', 0):.1f} "
                      f"| {k.get('split_plan', 0):.1f} | {f:.3f} | {fb:.3f} |", flush=True)
    os.environ.pop("FFAVATAR_NO_SPLIT", None)


if __name__ == "__main__":
    main()
