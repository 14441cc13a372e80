"""Profile driver for the LBS kernels: B=1 and B=16, 81,424 anchored Gaussians, forward and
forward+backward, a few iterations each (FLAME sizes, random anchors as in benchmarks/bench_lbs.py).

Usage on the GPU machine (after the dev build):
    FFAVATAR_EXT_PATH=... PYTHONPATH=. ncu --clock-control none --set full -o lbs python scripts/profile_lbs.py
or  nsys profile python scripts/profile_lbs.py
"""
import importlib

import torch

V, J, S, P, N = 5023, 5, 400, 36, 81424


def main(iters: int = 3) -> None:
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
        for _ in range(iters):
            with torch.no_grad():
                F.skin_gaussians(betas, pose, *model, idx, aw, off, q)
        for _ in range(iters):
            b, p, o, qq = (t.detach().requires_grad_() for t in (betas, pose, off, q))
            means, quats = F.skin_gaussians(b, p, *model, idx, aw, o, qq)
            loss = (means * means).sum() + (quats * quats).sum()
            torch.autograd.grad(loss, [b, p, o, qq])
        torch.cuda.synchronize()
        print(f"B={B}: done")


if __name__ == "__main__":
    main()
