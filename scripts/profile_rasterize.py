"""Where the rasterizer's time goes on the GPU: per-kernel device time and host time per call, ours
vs gsplat (when importable), 81K-Gaussian head at 512x512. Usage: python scripts/profile_rasterize.py [C]"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import ffavatar_kernels as fk
import _paths  # noqa: F401  (repository root on sys.path)
from benchmarks.scenes import head_scene


def run_profile(name, fn, iters=20):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    print(f"\n==== {name} ({iters} iters; times are totals)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    print(f"{name}: wall per call {start.elapsed_time(end) / iters:.3f} ms")


def main():
    C = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    s = head_scene(C=C, size=512)
    grads = [k for k in ("means", "quats", "scales", "opacities", "colors")]

    def ours(backward):
        def f():
            t = {k: (v.detach().requires_grad_(backward) if k in grads else v) for k, v in s.items()}
            img, alpha, _ = fk.rasterize(**t)
            if backward:
                (img.sum() + alpha.sum()).backward()
        return f

    run_profile(f"ours fwd C={C}", ours(False))
    run_profile(f"ours fwd+bwd C={C}", ours(True))
    try:
        import gsplat
    except ImportError:
        print("gsplat not importable")
        return

    def gs(backward):
        def f():
            t = {k: (v.detach().requires_grad_(backward) if k in grads else v) for k, v in s.items()}
            img, alpha, _ = gsplat.rasterization(**t, packed=False)
            if backward:
                (img.sum() + alpha.sum()).backward()
        return f

    run_profile(f"gsplat fwd C={C}", gs(False))
    run_profile(f"gsplat fwd+bwd C={C}", gs(True))


if __name__ == "__main__":
    main()
