"""Where the LBS time goes on the GPU: per-kernel device time (torch.profiler) for B=1 and B=16,
81,424 anchored Gaussians (FLAME sizes, random anchors as in benchmarks/bench_lbs.py), forward
(no grad) and forward+backward. Usage: python scripts/profile_lbs.py
(also usable under ncu: ncu --clock-control none -k regex:fwd python scripts/profile_lbs.py)"""
import importlib

import torch
from torch.profiler import ProfilerActivity, profile

V, J, S, P, N = 5023, 5, 400, 36, 81424


def _table(name, fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    print(f"\n==== {name} ({iters} iters; totals)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))


def main() -> None:
    F = importlib.import_module("ffavatar_kernels.flame_lbs")
    dev = "cuda"
    W = torch.rand(V, J, device=dev) ** 4
    Jr = torch.rand(J, V, device=dev)
    model = [torch.randn(V, 3, device=dev) * 0.1, torch.randn(V, 3, S, device=dev) * 1e-3,
             torch.randn(P, V * 3, device=dev) * 1e-2, Jr / Jr.sum(1, keepdim=True),
             torch.tensor([-1, 0, 1, 1, 1]), W / W.sum(1, keepdim=True)]
    idx = torch.randint(0, V, (N, 4), device=dev, dtype=torch.int32)
    aw = torch.rand(N, 4, device=dev) + 0.05
    aw = aw / aw.sum(1, keepdim=True)
    off, q = torch.randn(N, 3, device=dev) * 1e-2, torch.randn(N, 4, device=dev)
    for B in (1, 16):
        betas = torch.randn(B, S, device=dev)
        pose = torch.randn(B, J * 3, device=dev) * 0.3

        def fwd():
            with torch.no_grad():
                F.skin_gaussians(betas, pose, *model, idx, aw, off, q)

        def fwd_bwd():
            b, p, o, qq = (t.detach().requires_grad_() for t in (betas, pose, off, q))
            means, quats = F.skin_gaussians(b, p, *model, idx, aw, o, qq)
            torch.autograd.grad((means * means).sum() + (quats * quats).sum(), [b, p, o, qq])

        _table(f"LBS B={B} fwd", fwd)
        _table(f"LBS B={B} fwd+bwd", fwd_bwd)


if __name__ == "__main__":
    main()
