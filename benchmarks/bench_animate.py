"""End-to-end animation frame time: skin ~80K anchored Gaussians + render 512x512, 1 camera per frame.

Ours (ffavatar_kernels.skin_gaussians + rasterize) vs plain-PyTorch LBS (the reference twin) + gsplat
(when importable). B = 1 and B = 16 frames per batched call. FPS in extra_info. Both skin with the
expression-only fast path of a fixed avatar shape, as ffavatar.Animator does (the shaped template is
computed once, outside the timed region; each frame blends the n_expr expression directions).
"""
import pytest
import torch

from ffavatar import canonical_gaussians, intrinsics, motion_script, orbit, synthetic_head
from ffavatar.render import render_frames, select_backend

SIZE = 512


@pytest.fixture(scope="module")
def scene():
    dev = "cuda"
    m = synthetic_head(device=dev)
    g = canonical_gaussians(m)
    betas, pose = motion_script(16, device=dev)
    args = m.expression_lbs_args(betas[0, :m.n_shape])
    expr = betas[:, m.n_shape:].contiguous()  # [16,n_expr]
    return m, g, expr, args, pose, orbit(16, device=dev), intrinsics(SIZE, SIZE, 22.0, device=dev)


def _bench(benchmark, scene, backend, B):
    m, g, expr, args, pose, views, K = scene
    def run():
        with torch.no_grad():
            img = render_frames(m, g, expr[:B], pose[:B], views[:B], K, SIZE, SIZE, backend=backend,
                                lbs_args=args)
        torch.cuda.synchronize()
        return img
    _time(benchmark, run, B, g.num_gaussians, backend.description)


def _time(benchmark, run, B, gaussians, description):
    """Check one call of ``run`` (B frames), time it (20 rounds, median) and record FPS."""
    img = run()
    assert img.shape == (B, SIZE, SIZE, 3) and torch.isfinite(img).all()
    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(frames=B, gaussians=gaussians, size=SIZE, ms_per_frame=1e3 * t / B, fps=B / t,
                                backend=description)


@pytest.mark.cuda
@pytest.mark.parametrize("B", [1, 16])
def test_animate_ours(benchmark, scene, B):
    _bench(benchmark, scene, select_backend("cuda", "compiled"), B)


@pytest.mark.cuda
@pytest.mark.parametrize("B", [1, 16])
def test_animate_torch_lbs_gsplat(benchmark, scene, B):
    from benchmarks.comparators import gsplat_backend
    backend = gsplat_backend(torch_lbs=True)
    _bench(benchmark, scene, backend, B)


@pytest.mark.cuda
@pytest.mark.parametrize("B", [1, 16])
def test_animate_ours_graph(benchmark, scene, B):
    """The AnimationEngine: the same frames (mean-head avatar, the demo's motion and orbit, lit) replayed
    from a CUDA graph; the parameters are copied into its static buffers inside the timed region."""
    from ffavatar.avatar import AnimationEngine, Avatar
    m, g, expr, args, pose, views, K = scene
    avatar = Avatar.from_canonical(m, g)
    eng = AnimationEngine(avatar, m, SIZE, SIZE, K=K, batch=B, lit=True, background=(0.08, 0.09, 0.11),
                          graph=True)

    def run():
        img = eng.render(expr[:B], pose[:B], viewmats=views[:B], copy=False)
        torch.cuda.synchronize()
        return img
    _time(benchmark, run, B, g.num_gaussians, "AnimationEngine (CUDA graph)")
    assert eng.captures == 1
