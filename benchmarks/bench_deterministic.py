"""The cost of deterministic mode (``torch.use_deterministic_algorithms(True)``; RELIABILITY.md
"Determinism"), usual vs deterministic in one process:

- rasterize forward + backward, the ~80K-Gaussian synthetic head at 512x512, 1 camera and 8
  (the deterministic backward runs twice: float pass + fixed-point pass);
- skin_gaussians forward + backward, 81K anchored Gaussians on a FLAME-sized model, B = 1 and 8
  (deterministic: the PyTorch twin instead of the kernels).

extra_info: usual_ms, det_ms, det_cost (det / usual) and the peak memory of each (MB above the inputs);
the pytest-benchmark stats time the deterministic mode.
"""
import os

import pytest
import torch

# cuBLAS's deterministic workspace (the skinning twin's matmuls need it under the switch): PyTorch
# reads it at the process's first cuBLAS call, so set at import (collection), before any benchmark.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import ffavatar_kernels as fk
from bench_flame_lbs import N, _anchors, _args, _model
from bench_rasterize import KEYS, _peak_mb, _prep, _time_ms

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not (torch.cuda.is_available() and fk.has_kernel("rasterize", "cuda")),
                                                   reason="needs a GPU and the CUDA kernels")]


def _both(benchmark, fn):
    """Time fn with the switch off, then on (restored after); fill extra_info."""
    before = torch.are_deterministic_algorithms_enabled()
    info = {}
    try:
        for tag, on in (("usual", False), ("det", True)):
            torch.use_deterministic_algorithms(on)
            info[tag + "_ms"] = _time_ms(fn)
            info[tag + "_peak_mb"] = _peak_mb(fn)
        info["det_cost"] = info["det_ms"] / info["usual_ms"]
        benchmark.extra_info.update(info)
        benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=10, iterations=1, warmup_rounds=2)
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("C", [1, 8])
def test_rasterize_fwd_bwd(benchmark, C):
    from benchmarks.scenes import head_scene
    s = _prep(head_scene(size=512, device="cuda", C=C), True)

    def run():
        img, alpha, _ = fk.rasterize(**s)
        (img.sum() + alpha.sum()).backward()
        for k in KEYS:
            s[k].grad = None
    _both(benchmark, run)


@pytest.mark.parametrize("B", [1, 8])
def test_skin_gaussians_fwd_bwd(benchmark, B):
    m = _model("cuda")
    idx, aw, off, q = _anchors("cuda")
    off.requires_grad_(True)
    q.requires_grad_(True)
    betas = torch.randn(B, 400, device="cuda") * 0.5
    pose = torch.randn(B, 15, device="cuda") * 0.2
    go = torch.randn(B, N, 3, device="cuda")

    def run():
        means, quats = fk.skin_gaussians(betas, pose, *_args(m), idx, aw, off, q)
        torch.autograd.grad((means * go).sum() + quats.sum(), (off, q))
    _both(benchmark, run)
