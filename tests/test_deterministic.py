"""Deterministic mode (``torch.use_deterministic_algorithms(True)``, RELIABILITY.md "Determinism").

CPU: the skinning twin that deterministic mode runs on CUDA (``_lbs_deterministic``) gives the
kernels' values and gradients (float64, forced on); the training switch reaches the loop.
CUDA: the rasterizer's fixed-point backward, skinning and attention give bit-identical gradients
on repeated runs and agree with the usual (float-atomic) kernels; a tiny training run repeats bit
for bit.
"""
from __future__ import annotations

import pytest
import torch

import ffavatar_kernels as fk
from ffavatar_kernels import _lbs_deterministic as det
from ffavatar_kernels.rasterize import rasterize
from test_flame_lbs import _all_grads, branch_ok, make_anchors, make_inputs, make_model
from test_rasterize_helpers import make_scene, rel, run_with_grads

NAMES = ["betas", "pose", "v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights",
         "anchor_weights", "offsets", "quats"]


@pytest.fixture
def deterministic(monkeypatch):
    """PyTorch's deterministic switch on for one test (restored after; conftest.py sets cuBLAS's
    CUBLAS_WORKSPACE_CONFIG before the first test)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _skin_case(device, dtype, B=3, V=300, J=5, S=20, N=500, offsets_per_frame=False):
    m = make_model(V, J, S)
    betas, pose = make_inputs(B, J, S)
    idx, aw = make_anchors(N, V)
    off = torch.randn((B, N, 3) if offsets_per_frame else (N, 3), dtype=torch.float64) * 1e-2
    q = torch.randn(N, 4, dtype=torch.float64)
    shapes = [(B, V, 3), (B, J, 3), (B, J, 4, 4), (B, N, 3), (B, N, 4)]
    go = [torch.randn(s, dtype=torch.float64) for s in shapes]
    go[4] = go[4] * branch_ok(betas, pose, m, idx, aw)[..., None]  # no gradient through near-tie branches
    c = lambda t: t.to(dtype=dtype if t.is_floating_point() else t.dtype, device=device)  # noqa: E731
    m = {k: c(v) for k, v in m.items()}
    return (c(betas), c(pose), m, c(idx), c(aw), c(off), c(q), [c(g) for g in go])


@pytest.mark.parametrize("means_only", [False, True])
@pytest.mark.parametrize("offsets_per_frame", [False, True])
def test_twin_matches_the_kernels(monkeypatch, means_only, offsets_per_frame):
    """The PyTorch twin that deterministic mode runs (forced here on the CPU) against the CPU kernels:
    every gradient of flame_lbs + skin_gaussians, float64."""
    betas, pose, m, idx, aw, off, q, go = _skin_case("cpu", torch.float64, offsets_per_frame=offsets_per_frame)
    fns = (fk.flame_lbs, fk.skin_gaussians)
    want = _all_grads(fns, betas, pose, m, idx, aw, off, q, go, means_only)
    calls = []
    monkeypatch.setattr(det, "active", lambda t: calls.append(1) or True)
    got = _all_grads(fns, betas, pose, m, idx, aw, off, q, go, means_only)
    assert len(calls) == 2  # both public calls took the twin
    for name, g, w in zip(NAMES, got, want):
        assert g is not None and g.shape == w.shape, name
        assert rel(g, w) < 1e-10, (name, rel(g, w))


def test_twin_values_match_the_kernels(monkeypatch):
    betas, pose, m, idx, aw, off, q, _ = _skin_case("cpu", torch.float64)
    args = (betas, pose, *[m[k] for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "parents",
                                          "lbs_weights")])
    off.requires_grad_(True)  # a gradient is needed: the route that deterministic mode changes
    want = fk.skin_gaussians(*args, idx, aw, off, q), fk.flame_lbs(*args, return_transforms=True)
    monkeypatch.setattr(det, "active", lambda t: True)
    betas.requires_grad_(True)
    got = fk.skin_gaussians(*args, idx, aw, off, q), fk.flame_lbs(*args, return_transforms=True)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        assert rel(g.detach(), w.detach()) < 1e-12


def test_inactive_without_the_switch_or_on_cpu():
    assert not det.active(torch.zeros(1))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not det.active(torch.zeros(1))  # the CPU kernels are deterministic already
    finally:
        torch.use_deterministic_algorithms(before)


def test_training_switch(tmp_path):
    """``deterministic`` (config key, ``--deterministic`` of both training commands) turns the switch
    on for the run only."""
    import json

    import ffavatar.train.loop as loop
    from ffavatar.cli.main import main as cli_main
    from ffavatar.train.__main__ import main as module_main
    cfg = {"preset": "tiny", "preset_overrides": {"max_queries": 64}, "steps": 1, "eval_every": 0,
           "ckpt_every": 0, "progress": False, "threads": 1,
           "data": {"image_size": 32, "num_targets": 2, "max_views": 1}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    before = torch.are_deterministic_algorithms_enabled()
    seen = []
    real = loop._train

    def spy(c, *a, **kw):
        seen.append((c.deterministic, torch.are_deterministic_algorithms_enabled()))
        return real(c, *a, **kw)
    loop._train = spy
    try:
        assert module_main([str(path), "--out", str(tmp_path / "a"), "--deterministic"]) == 0
        assert cli_main(["train", str(path), "--out", str(tmp_path / "b"), "--deterministic"]) == 0
        assert module_main([str(path), "--out", str(tmp_path / "c")]) == 0
    finally:
        loop._train = real
    assert seen == [(True, True), (True, True), (False, before)]
    assert torch.are_deterministic_algorithms_enabled() == before


# ---- CUDA -----------------------------------------------------------------------------------------
def _grads_twice(fn):
    a, b = fn(), fn()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: not bit-identical between two runs"
    return a


@pytest.mark.cuda
@pytest.mark.parametrize("D,tile_size", [(3, 16), (40, 16), (3, 32), (3, 8)])
@pytest.mark.parametrize("batched", [False, True])
def test_cuda_rasterize_backward_repeats_bit_for_bit(deterministic, D, tile_size, batched):
    """Thousands of overlapping splats (many atomics per Gaussian, split tiles; D = 40: several
    channel chunks; 32x32 tiles: 1,024 threads): the fixed-point backward repeats exactly and agrees
    with the float-atomic one."""
    s = make_scene(N=3000, C=2, W=96, H=80, D=D, B=2 if batched else None, spread=0.3, dtype=torch.float32,
                   device="cuda")
    run = lambda: run_with_grads(rasterize, s, seed_grads=3, tile_size=tile_size)[3]  # noqa: E731
    got = _grads_twice(run)
    torch.use_deterministic_algorithms(False)
    want = run()
    for k in got:
        assert got[k].abs().sum() > 0, k
        assert rel(got[k], want[k]) < 1e-5, (k, rel(got[k], want[k]))
        # element-wise too (a norm-wide ratio would hide lost small elements): 1e-5 of each element
        # plus 1e-6 of the largest (the float atomics' own rounding, cancellation included)
        err = (got[k] - want[k]).abs()
        assert (err <= 1e-5 * want[k].abs() + 1e-6 * want[k].abs().max()).float().mean() > 0.999, k


@pytest.mark.cuda
def test_cuda_rasterize_backward_non_finite_input(deterministic):
    """A NaN colour makes the alpha gradients NaN: those kinds (means2d, conics, opacities) keep the
    float pass (its NaN pattern, no garbage integers); the colour gradients stay finite and fixed
    point, so they still repeat bit for bit."""
    s = make_scene(N=400, C=2, W=64, H=48, D=3, dtype=torch.float32, device="cuda")
    s["colors"][5, 1] = float("nan")
    got = run_with_grads(rasterize, s, seed_grads=1)[3]
    again = run_with_grads(rasterize, s, seed_grads=1)[3]
    assert torch.equal(got["colors"], again["colors"])
    torch.use_deterministic_algorithms(False)
    want = run_with_grads(rasterize, s, seed_grads=1)[3]
    for k in got:
        assert torch.equal(torch.isnan(got[k]), torch.isnan(want[k])), k


@pytest.mark.cuda
@pytest.mark.parametrize("means_only", [False, True])
def test_cuda_skinning_repeats_bit_for_bit(deterministic, means_only):
    """80K-scale anchoring on FLAME-sized meshes (atomics on joint transforms and shared vertices)."""
    betas, pose, m, idx, aw, off, q, go = _skin_case("cuda", torch.float32, B=4, V=5023, J=5, S=400, N=40000)
    fns = (fk.flame_lbs, fk.skin_gaussians)
    run = lambda: dict(zip(NAMES, _all_grads(fns, betas, pose, m, idx, aw, off, q, go, means_only)))  # noqa: E731
    got = _grads_twice(run)
    torch.use_deterministic_algorithms(False)
    want = run()
    for k in got:
        assert rel(got[k], want[k]) < 1e-4, (k, rel(got[k], want[k]))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_attention_backward_repeats_bit_for_bit(deterministic, dtype):
    """Few key blocks, many queries: the shape whose dK / dV the usual backward splits with atomics."""
    q = torch.randn(1, 2, 8192, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, 2, 256, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, 2, 256, 64, device="cuda", dtype=dtype, requires_grad=True)
    go = torch.randn(1, 2, 8192, 64, device="cuda", dtype=dtype)

    def run():
        gq, gk, gv = torch.autograd.grad((fk.cross_attention(q, k, v) * go).sum(), (q, k, v))
        return {"q": gq, "k": gk, "v": gv}
    got = _grads_twice(run)
    torch.use_deterministic_algorithms(False)
    want = run()
    for n in got:
        assert rel(got[n], want[n]) < (2e-2 if dtype == torch.bfloat16 else 1e-4), n


@pytest.mark.cuda
def test_cuda_training_repeats_bit_for_bit(tmp_path):
    """Three steps of a tiny preset on the GPU, twice, deterministic: the same weights bit for bit."""
    from ffavatar.train.checkpoint import load_checkpoint
    from ffavatar.train.config import TrainConfig
    from ffavatar.train.loop import train

    def run(out):
        cfg = TrainConfig.from_dict({"preset": "tiny", "preset_overrides": {"max_queries": 256}, "steps": 3,
                                     "eval_every": 0, "ckpt_every": 0, "out": str(out), "progress": False,
                                     "deterministic": True, "seed": 3,
                                     "data": {"image_size": 64, "num_targets": 4, "max_views": 2}})
        train(cfg)
        return load_checkpoint(str(out / "checkpoint.safetensors")).model_state
    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.cuda
def test_cuda_encoder_position_resampling_under_the_switch(deterministic):
    """An input size other than the pretraining grid resamples the trainable position embeddings
    (bicubic, no deterministic CUDA backward): under the switch it runs on the CPU, and repeats."""
    from ffavatar.nn.encoder import ViTConfig, ViTEncoder
    enc = ViTEncoder(ViTConfig(width=64, depth=1, heads=2, grid=4)).cuda()
    x = torch.randn(2, 3, 84, 84, device="cuda")  # a 6x6 grid

    def run():
        enc.zero_grad(set_to_none=True)
        enc(x).float().square().sum().backward()
        return {"pos": enc.pos_embed.grad.clone()}
    got = _grads_twice(run)
    assert torch.isfinite(got["pos"]).all() and got["pos"].abs().sum() > 0
