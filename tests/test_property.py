"""Property tests (issue 19, item 2): random shapes and values within each op's documented domain,
the op's CPU path against its reference twin in ``ffavatar_kernels.reference`` at the tolerances
of docs/design.md section 4 (fp32 vs a float64 reference: 1e-5 forward, 1e-4 gradients; float64
paths tighter). ``cuda`` variants run the CUDA kernels on the same draws (skipped without a GPU).

Hypothesis draws the shapes and a seed for the values (torch's generator); a failure prints the
draw. Example counts are small: each test takes a few seconds on a 2-core CPU.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffavatar_kernels as fk
from ffavatar_kernels import _ext
from ffavatar_kernels.cross_attention import force_math_path
from ffavatar_kernels.reference import flame_lbs as ref
from ffavatar_kernels.reference.rasterize import rasterize as rasterize_ref
from test_cross_attention import check, make_inputs as attn_inputs, run_and_compare
from test_flame_lbs import make_anchors, make_inputs, make_model, model_args
from test_rasterize_helpers import DIFF_KEYS, cast, make_scene, run_with_grads

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")
INTERP = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _settings(n):
    # the autouse fresh_seed fixture runs once per test, not per example: the draws carry their own seed
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    nb = b.norm().item()
    return (a - b).norm().item() / nb if nb > 0 else (a - b).norm().item()


SEEDS = st.integers(0, 2**31 - 1)


@st.composite
def skeletons(draw):
    J = draw(st.integers(1, 6))
    return [-1] + [draw(st.integers(0, j - 1)) for j in range(1, J)]


def _cast(t, dtype, device):
    if t is None or isinstance(t, list):
        return t
    return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)


def _branch_ok(betas, pose, m, idx, aw, margin=1e-4):
    """[B,N]: Gaussians whose Shepperd branch is unambiguous (see test_flame_lbs.branch_ok; no
    minimum share here, since a draw may have a handful of Gaussians)."""
    _, _, A = ref._lbs_core(betas, pose, *model_args(m))
    Wu = (aw[:, :, None] * m["lbs_weights"][idx.long()]).sum(1)
    M = torch.einsum("nj,bjrc->bnrc", Wu, A[:, :, :3, :3])
    d = torch.stack([M.diagonal(dim1=-2, dim2=-1).sum(-1), M[..., 0, 0], M[..., 1, 1], M[..., 2, 2]], -1)
    top = d.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) > margin


# ---- flame_lbs / skin_gaussians -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@_settings(25)
@given(seed=SEEDS, B=st.integers(0, 3), V=st.integers(1, 40), S=st.integers(0, 8), parents=skeletons(),
       matrices=st.booleans(), scale=st.floats(0.0, 3.0))
def test_flame_lbs_matches_reference(device, seed, B, V, S, parents, matrices, scale):
    torch.manual_seed(seed)
    J = len(parents)
    m = make_model(V, J, S, parents=parents)
    betas, pose = make_inputs(B, J, S, matrices=matrices, scale=scale)
    want = ref.flame_lbs(betas, pose, *model_args(m), return_transforms=True)
    dtypes = [(torch.float32, 1e-5)] + ([(torch.float64, 1e-10)] if device == "cpu" else [])
    for dtype, tol in dtypes:
        c = lambda t: _cast(t, dtype, device)  # noqa: E731
        got = fk.flame_lbs(c(betas), c(pose), *[c(t) for t in model_args(m)], return_transforms=True)
        for name, g, w in zip(("vertices", "joints", "transforms"), got, want):
            assert g.shape == w.shape and g.dtype == dtype, name
            assert rel(g, w) < tol, (name, dtype, rel(g, w))


@pytest.mark.parametrize("device", DEVICES)
@_settings(25)
@given(seed=SEEDS, B=st.integers(0, 3), V=st.integers(1, 30), S=st.integers(0, 6), parents=skeletons(),
       N=st.integers(0, 40), K=st.integers(1, 4), idx32=st.booleans(),
       offsets=st.sampled_from(["none", "shared", "per_frame"]), quats=st.booleans(), means_only=st.booleans(),
       grads=st.booleans())
def test_skin_gaussians_matches_reference(device, seed, B, V, S, parents, N, K, idx32, offsets, quats, means_only,
                                          grads):
    torch.manual_seed(seed)
    J = len(parents)
    m = make_model(V, J, S, parents=parents)
    betas, pose = make_inputs(B, J, S)
    idx, aw = make_anchors(N, V, K=K, idx_dtype=torch.int32 if idx32 else torch.int64)
    off = None if offsets == "none" else torch.randn(((B,) if offsets == "per_frame" else ()) + (N, 3),
                                                     dtype=torch.float64) * 1e-2
    q = torch.randn(N, 4, dtype=torch.float64) if quats else None
    ok = _branch_ok(betas, pose, m, idx, aw)
    dtypes = [(torch.float32, 1e-5, 1e-4)] + ([(torch.float64, 1e-10, 1e-8)] if device == "cpu" else [])
    for dtype, ftol, gtol in dtypes:
        leaves = {"betas": betas, "pose": pose, "offsets": off, "quats": q, "anchor_weights": aw}
        ins = {k: (None if v is None else v.detach().clone().requires_grad_(grads)) for k, v in leaves.items()}
        want = ref.skin_gaussians(ins["betas"], ins["pose"], *model_args(m), idx, ins["anchor_weights"],
                                  ins["offsets"], ins["quats"], means_only=means_only)
        c = {k: (None if v is None else _cast(v.detach(), dtype, device).requires_grad_(grads))
             for k, v in leaves.items()}
        got = fk.skin_gaussians(c["betas"], c["pose"], *[_cast(t, dtype, device) for t in model_args(m)],
                                _cast(idx, dtype, device), c["anchor_weights"], c["offsets"], c["quats"],
                                means_only=means_only)
        assert got[0].shape == (B, N, 3) and got[1].shape == (B, N, 4)
        assert rel(got[0], want[0]) < ftol, ("means", dtype, rel(got[0], want[0]))
        mask = ok.to(device) if not means_only else torch.ones_like(ok, device=device)
        assert rel(got[1][mask], want[1].to(device)[mask]) < ftol, ("quats", dtype)
        if grads and B * N > 0:
            gm = torch.randn(B, N, 3, dtype=torch.float64)
            gq = torch.randn(B, N, 4, dtype=torch.float64) * ok[..., None]  # ambiguous branches: no gradient
            ((want[0] * gm).sum() + (want[1] * gq).sum()).backward()
            ((got[0] * gm.to(got[0])).sum() + (got[1] * gq.to(got[1])).sum()).backward()
            for k in leaves:
                if ins[k] is not None:
                    assert rel(c[k].grad, ins[k].grad) < gtol, (k, dtype, rel(c[k].grad, ins[k].grad))


# ---- rasterize --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@_settings(20)
@given(seed=SEEDS, N=st.integers(0, 25), C=st.integers(1, 3), W=st.integers(1, 40), H=st.integers(1, 40),
       D=st.integers(1, 4), B=st.sampled_from([None, 1, 2]), per_camera=st.booleans(),
       render_mode=st.sampled_from(["RGB", "ED", "RGB+ED"]), rasterize_mode=st.sampled_from(["classic", "antialiased"]),
       tile_size=st.sampled_from([1, 5, 8, 16, 32]), bg=st.booleans())
def test_rasterize_matches_reference(device, seed, N, C, W, H, D, B, per_camera, render_mode, rasterize_mode,
                                     tile_size, bg):
    torch.manual_seed(seed)
    s = make_scene(N=N, C=C, W=W, H=H, D=D, B=B, per_camera=per_camera, spread=0.5, well_conditioned=True)
    lead = s["viewmats"].shape[:-2]
    Dp = {"RGB": D, "ED": 1, "RGB+ED": D + 1}[render_mode]
    backgrounds = torch.rand(lead + (Dp,), dtype=torch.float64) if bg else None
    kw = dict(render_mode=render_mode, rasterize_mode=rasterize_mode)
    ri, ra, rm, rg = run_with_grads(rasterize_ref, s, backgrounds, seed_grads=seed, **kw)
    # fp32 gradients: only where they are well conditioned (RGB). In the depth modes the expected
    # depth's gradient w.r.t. the shape of a lone Gaussian cancels analytically (ED = z), and fp32
    # leaves ~1e-2 relative noise on the tiny remainder; float64 checks those gradients tightly.
    # On the CPU, fp32 gradients are test_rasterize.py's (fixed, larger scenes).
    tols = [(torch.float32, 1e-5, 1e-4 if device == "cuda" and render_mode == "RGB" else None)]
    tols += [(torch.float64, 1e-10, 1e-8)] if device == "cpu" else []
    for dtype, ftol, gtol in tols:
        sd = cast(s, dtype, device)
        b = None if backgrounds is None else backgrounds.to(dtype=dtype, device=device)
        oi, oa, om, og = run_with_grads(fk.rasterize, sd, b, seed_grads=seed, tile_size=tile_size, **kw)
        assert oi.shape == ri.shape and oa.shape == ra.shape
        assert rel(oi, ri) < ftol and rel(oa, ra) < ftol, (dtype, rel(oi, ri), rel(oa, ra))
        assert torch.equal(om["visibility"].cpu(), rm["visibility"])
        for k in DIFF_KEYS + (("backgrounds",) if bg else ()):
            if gtol is None:
                break
            if rg[k] is None:
                assert og[k] is None or (og[k] == 0).all(), k
            else:
                assert rel(og[k], rg[k]) < gtol, (dtype, k, rel(og[k], rg[k]))


# ---- cross_attention --------------------------------------------------------------------------------
@st.composite
def attention_problems(draw, max_len=24, dims=(32, 64, 128)):
    layout = draw(st.sampled_from(["dense", "varlen", "qdense_kvar", "qvar_kdense"]))
    batch = draw(st.integers(1, 3))
    lens = st.lists(st.integers(0, max_len), min_size=batch, max_size=batch)
    q_lens, k_lens = draw(lens), draw(lens)
    if layout in ("dense", "qdense_kvar"):
        q_lens = [q_lens[0]] * batch
    if layout in ("dense", "qvar_kdense"):
        k_lens = [k_lens[0]] * batch
    # at least one query and one key (empty problems: test_reliability_ops; with no keys at all
    # the reference's output does not depend on q and has no gradient)
    if sum(q_lens) == 0:
        q_lens = [1] * batch if layout in ("dense", "qdense_kvar") else [1] + q_lens[1:]
    if sum(k_lens) == 0:
        k_lens = [1] * batch if layout in ("dense", "qvar_kdense") else [1] + k_lens[1:]
    # |scale| >= 0.05: a scale that underflows fp32 leaves only fp32's zero against fp64's 1e-60s;
    # |scale| <= 4 / sqrt(d): logits of std <= 4 for unit-normal q, k (the default is 1 / sqrt(d));
    # beyond, the softmax is so peaked that fp32's dq / dk differ from fp64's by more than 1e-4
    # relative (cancellation in P * (dP - D)), in every implementation, SDPA's included
    heads, d = draw(st.integers(1, 3)), draw(st.sampled_from(dims))
    hi = 4.0 / d ** 0.5
    scale = draw(st.one_of(st.none(), st.floats(-hi, -0.05), st.floats(0.05, hi)))
    return layout, heads, d, q_lens, k_lens, scale


def _attention_case(device, seed, problem, dtype=torch.float32):
    torch.manual_seed(seed)
    layout, heads, d, q_lens, k_lens, scale = problem
    q, k, v, cu_q, cu_k = attn_inputs(layout, dtype, device, heads, d, q_lens, k_lens)
    return run_and_compare(q, k, v, cu_q, cu_k, scale=scale)


@_settings(25)
@given(seed=SEEDS, problem=attention_problems())
def test_cross_attention_math_path_matches_reference(seed, problem):
    with force_math_path():
        check(_attention_case("cpu", seed, problem), 1e-5, 1e-4)


@pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 (set by conftest without a GPU)")
@_settings(6)
@given(seed=SEEDS, problem=attention_problems(max_len=16, dims=(32, 64)))
def test_cross_attention_interpreted_kernels_match_reference(seed, problem):
    check(_attention_case("cpu", seed, problem), 1e-5, 1e-4)


@pytest.mark.cuda
@_settings(25)
@given(seed=SEEDS, problem=attention_problems(max_len=300))
def test_cross_attention_cuda_matches_reference(seed, problem):
    check(_attention_case("cuda", seed, problem), 1e-5, 1e-4)
