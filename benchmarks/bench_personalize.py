"""Personalization step time: the mean-head avatar (~80K Gaussians) fitted to 4 views at 512x512.

Ours (skin_gaussians + rasterize + the separable-convolution SSIM, fused Adam) beside the same loop
with plain-PyTorch LBS + gsplat rendering (benchmarks/comparators.py), in one process. One round =
20 steps of ``ffavatar.avatar.personalize`` (residuals only, no evaluation, no progress bar), CUDA
synchronized; ms_per_step and steps_per_s in extra_info. The targets photos are renders of a tinted
mean head (their content does not change the work per step).
"""
import pytest
import torch

from ffavatar.avatar import Avatar
from ffavatar.avatar.personalize import personalize
from ffavatar.flame import canonical_gaussians, synthetic_head
from ffavatar.geometry import intrinsics, look_at
from ffavatar.render import select_backend

SIZE, VIEWS, STEPS = 512, 4, 20


@pytest.fixture(scope="module")
def setup():
    dev = "cuda"
    m = synthetic_head(device=dev)
    avatar = Avatar.from_canonical(m, canonical_gaussians(m))
    az = torch.tensor([-40.0, -12.0, 15.0, 38.0]).deg2rad()
    eyes = torch.stack([0.75 * az.sin(), torch.full_like(az, 0.02), 0.75 * az.cos()], -1)
    vm = look_at(eyes, torch.tensor([0.0, -0.02, 0.0]).expand(VIEWS, 3)).to(dev)
    K = intrinsics(SIZE, SIZE, 22.0, device=dev)
    expr = 0.5 * torch.randn(VIEWS, 20, device=dev)
    target = avatar.to(dev)
    target.colors = (target.colors * torch.tensor([1.05, 0.95, 0.9], device=dev)).clamp(0, 1)
    with torch.no_grad():
        images = target.render(m, vm, K, SIZE, SIZE, expr)
    return m, avatar, images, vm, K, expr


def _bench(benchmark, setup, backend):
    m, avatar, images, vm, K, expr = setup

    def run():
        out, hist = personalize(avatar, m, images, vm, K, expression=expr, steps=STEPS, progress=False,
                                backend=backend)
        torch.cuda.synchronize()
        return hist
    hist = run()
    assert hist.steps == STEPS and all(torch.isfinite(torch.tensor([l for _, l in hist.loss])))
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(steps=STEPS, views=VIEWS, size=SIZE, gaussians=avatar.num_gaussians,
                                ms_per_step=1e3 * t / STEPS, steps_per_s=STEPS / t, backend=backend.description)


@pytest.mark.cuda
def test_personalize_ours(benchmark, setup):
    _bench(benchmark, setup, select_backend("cuda", "compiled"))


@pytest.mark.cuda
def test_personalize_torch_lbs_gsplat(benchmark, setup):
    from benchmarks.comparators import gsplat_backend
    _bench(benchmark, setup, gsplat_backend(torch_lbs=True))
