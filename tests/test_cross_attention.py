"""cross_attention: exact CPU path, interpreted Triton kernels (TRITON_INTERPRET=1), CUDA kernels.

- ``test_cpu_*``: the exact PyTorch path (forced with ``force_math_path``, since under
  TRITON_INTERPRET=1 CPU tensors go to the interpreted kernels).
- ``*_interp``: the Triton kernels on CPU; they need TRITON_INTERPRET=1, which Triton reads at import
  time (tests/conftest.py sets it on machines without a GPU); ``test_interpreted_kernels`` re-runs
  them in a subprocess when this process has no GPU and no interpreter.
- ``cuda`` tests (bf16 vs SDPA's own error, fp32, varlen, poisoned outputs, SASS, opcheck,
  torch.compile): the end of this file.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ffavatar_kernels.cross_attention import cross_attention, force_math_path
from ffavatar_kernels.reference.cross_attention import cross_attention as ref_attention

INTERP = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@pytest.fixture
def cpu_math():
    """Force the exact PyTorch path for the duration of a test."""
    with force_math_path():
        yield


cpu_path = pytest.mark.usefixtures("cpu_math")
interp = pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 (run by "
                                               "test_interpreted_kernels in a subprocess)")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are empty)."""
    a, b = a.double(), b.double()
    den = b.norm().item()
    return (a - b).norm().item() / den if den > 0 else (a - b).norm().item()


def make_inputs(layout: str, dtype, device, heads: int, d: int, q_lens, k_lens):
    """Random q, k, v (+ cu_seqlens) for ``layout`` in dense / qdense_kvar / varlen / qvar_kdense.

    Dense sides use ``q_lens[0]`` / ``k_lens[0]`` for every batch element; varlen sides use the
    lists as per-batch lengths.
    """
    batch = len(q_lens) if layout in ("varlen", "qvar_kdense") else len(k_lens)
    cu_q = cu_k = None
    if layout in ("varlen", "qvar_kdense"):
        q = torch.randn(sum(q_lens), heads, d, device=device, dtype=dtype)
        cu_q = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32,
                            device=device)
    else:
        q = torch.randn(batch, heads, q_lens[0], d, device=device, dtype=dtype)
    if layout in ("varlen", "qdense_kvar"):
        k = torch.randn(sum(k_lens), heads, d, device=device, dtype=dtype)
        v = torch.randn(sum(k_lens), heads, d, device=device, dtype=dtype)
        cu_k = torch.tensor([0] + list(torch.tensor(k_lens).cumsum(0)), dtype=torch.int32,
                            device=device)
    else:
        k = torch.randn(batch, heads, k_lens[0], d, device=device, dtype=dtype)
        v = torch.randn(batch, heads, k_lens[0], d, device=device, dtype=dtype)
    return q, k, v, cu_q, cu_k


def run_and_compare(q, k, v, cu_q, cu_k, scale=None, grads=True, lse_grad=True):
    """Ours (with lse and gradients) vs the float64 reference; returns the relative errors."""
    qs, ks, vs = (t.detach().clone().requires_grad_(grads) for t in (q, k, v))
    out, lse = cross_attention(qs, ks, vs, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                               softmax_scale=scale, return_lse=True)
    qd, kd, vd = (t.detach().double().requires_grad_(grads) for t in (q, k, v))
    rout, rlse = ref_attention(qd, kd, vd, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                               softmax_scale=scale, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == rlse.shape
    fin = torch.isfinite(rlse)
    assert torch.equal(torch.isfinite(lse), fin)
    errs = {"out": rel(out, rout), "lse": rel(lse[fin], rlse[fin])}
    if grads:
        go = torch.randn_like(rout)
        gl = torch.randn_like(rlse).masked_fill(~fin, 0.0)
        loss = (out.double() * go).sum() + ((lse.double() * gl)[fin].sum() if lse_grad else 0.0)
        loss.backward()
        rloss = (rout * go).sum() + ((rlse * gl)[fin].sum() if lse_grad else 0.0)
        rloss.backward()
        for name, a, b in (("dq", qs.grad, qd.grad), ("dk", ks.grad, kd.grad),
                           ("dv", vs.grad, vd.grad)):
            assert a.shape == b.shape and a.dtype == q.dtype
            errs[name] = rel(a, b)
    return errs


def check(errs, fwd_tol, grad_tol):
    for name, e in errs.items():
        tol = fwd_tol if name in ("out", "lse") else grad_tol
        assert e < tol, f"{name}: relative error {e:.3g} >= {tol:.3g} (all: {errs})"


# ------------------------------------------------------------------------------------------------
# exact CPU path
# ------------------------------------------------------------------------------------------------
@cpu_path
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("layout", ["dense", "qdense_kvar", "varlen", "qvar_kdense"])
def test_cpu_fp32_matches_reference(d, layout):
    q_lens, k_lens = ([63, 1, 17], [40, 1, 130]) if layout != "dense" else ([63], [130, 130])
    if layout == "qvar_kdense":
        k_lens = [130]
    if layout == "qdense_kvar":
        q_lens = [63]
    q, k, v, cu_q, cu_k = make_inputs(layout, torch.float32, "cpu", 2, d, q_lens, k_lens)
    check(run_and_compare(q, k, v, cu_q, cu_k), 1e-5, 1e-4)


@cpu_path
def test_cpu_uneven_views_bank():
    """3 avatars with 1, 3 and 8 views of 1,369 tokens; packed and dense queries."""
    k_lens = [1369, 3 * 1369, 8 * 1369]
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.float32, "cpu", 1, 64, [1, 63, 37], k_lens)
    check(run_and_compare(q, k, v, cu_q, cu_k), 1e-5, 1e-4)
    q, k, v, _, cu_k = make_inputs("qdense_kvar", torch.float32, "cpu", 1, 32, [20], k_lens)
    check(run_and_compare(q, k, v, None, cu_k, grads=False), 1e-5, 1e-4)


@cpu_path
@pytest.mark.parametrize("nq,nk", [(1, 1), (1, 1370), (63, 1369), (1370, 63), (1369, 1)])
def test_cpu_odd_lengths(nq, nk):
    q, k, v, _, _ = make_inputs("dense", torch.float32, "cpu", 2, 64, [nq], [nk])
    check(run_and_compare(q, k, v, None, None), 1e-5, 1e-4)


@cpu_path
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs(dtype):
    q, k, v, cu_q, cu_k = make_inputs("varlen", dtype, "cpu", 2, 64, [5, 33], [70, 9])
    eps = 2e-3 if dtype == torch.float16 else 1.6e-2
    check(run_and_compare(q, k, v, cu_q, cu_k), 2 * eps, 4 * eps)


@cpu_path
def test_cpu_scale_strided_and_self_attention():
    # a [B,N,H,d] tensor viewed as [B,H,N,d]: strided, no copy needed; negative scale; k = v = q
    x = torch.randn(2, 50, 3, 64).transpose(1, 2)
    check(run_and_compare(x, x, x, None, None, scale=-0.3), 1e-5, 1e-4)
    xs = x.detach().clone().requires_grad_()
    out = cross_attention(xs, xs, xs)
    xd = x.detach().double().requires_grad_()
    rout = ref_attention(xd, xd, xd)
    go = torch.randn_like(rout)
    (out.double() * go).sum().backward()
    (rout * go).sum().backward()
    assert rel(out, rout) < 1e-5 and rel(xs.grad, xd.grad) < 1e-4


@cpu_path
def test_cpu_gradcheck_float64():
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.float64, "cpu", 1, 32, [2, 0, 1], [2, 1, 3])
    scale = 0.7

    def f(q, k, v):
        out, lse = cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                   softmax_scale=scale, return_lse=True)
        return out, lse

    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, fast_mode=True)
    q, k, v, _, _ = make_inputs("dense", torch.float64, "cpu", 1, 32, [2], [3])
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *a: cross_attention(*a, return_lse=True), inputs,
                                    fast_mode=True)


@cpu_path
@pytest.mark.parametrize("layout", ["dense", "varlen", "qdense_kvar"])
def test_cpu_opcheck(layout):
    q, k, v, cu_q, cu_k = make_inputs(layout, torch.float32, "cpu", 2, 32, [5, 3], [7, 4])
    batch = 2
    mq, mk = (5, 7)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), cu_q, cu_k, batch, mq,
            mk, 0.25)
    torch.library.opcheck(torch.ops.ffavatar.cross_attention_fwd.default, args)
    out, lse = torch.ops.ffavatar.cross_attention_fwd(*args)
    bargs = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(),
             lse.detach(), torch.randn_like(lse), cu_q, cu_k, batch, mq, mk, 0.25)
    torch.library.opcheck(torch.ops.ffavatar.cross_attention_bwd.default, bargs)


@cpu_path
def test_cpu_empty_inputs():
    q, k, v, _, _ = make_inputs("dense", torch.float32, "cpu", 2, 64, [0], [5])
    out, lse = cross_attention(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 0, 64) and lse.shape == (1, 2, 0)
    # no keys: out = 0, lse = -inf, gradients 0
    q = torch.randn(2, 2, 3, 64, requires_grad=True)
    k = torch.randn(2, 2, 0, 64, requires_grad=True)
    out, lse = cross_attention(q, k, k, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    out.sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    # zero avatars, and an avatar with no queries
    q = torch.randn(0, 2, 32)
    k = torch.randn(0, 2, 32)
    z = torch.zeros(1, dtype=torch.int32)
    out, lse = cross_attention(q, k, k, cu_seqlens_q=z, cu_seqlens_k=z, return_lse=True)
    assert out.shape == (0, 2, 32) and lse.shape == (2, 0)


@cpu_path
def test_cpu_bad_inputs():
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.float32, "cpu", 2, 64, [3, 4], [5, 6])
    with pytest.raises(ValueError, match="k: dim 1 \\(H\\)"):
        cross_attention(q, k[:, :1], v[:, :1], cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    with pytest.raises(ValueError, match="cu_seqlens_k: must be non-decreasing"):
        cross_attention(q, k, v, cu_seqlens_q=cu_q,
                        cu_seqlens_k=torch.tensor([0, 7, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens_k: last entry must equal total_k"):
        cross_attention(q, k, v, cu_seqlens_q=cu_q,
                        cu_seqlens_k=torch.tensor([0, 5, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens_q: must start at 0"):
        cross_attention(q, k, v, cu_seqlens_q=torch.tensor([1, 3, 7], dtype=torch.int32),
                        cu_seqlens_k=cu_k)
    with pytest.raises(ValueError, match="cu_seqlens_k: expected shape \\[3\\]"):
        cross_attention(q, k, v, cu_seqlens_q=cu_q,
                        cu_seqlens_k=torch.tensor([0, 11], dtype=torch.int32))
    with pytest.raises(ValueError, match="max length is 2"):
        cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_k=2)
    with pytest.raises(TypeError, match="cu_seqlens_q: expected dtype int32 or int64"):
        cross_attention(q, k, v, cu_seqlens_q=cu_q.float(), cu_seqlens_k=cu_k)
    with pytest.raises(ValueError, match="head dim must be one of"):
        cross_attention(q[..., :48], k[..., :48], v[..., :48], cu_seqlens_q=cu_q,
                        cu_seqlens_k=cu_k)
    with pytest.raises(ValueError, match="v: dim 2 \\(d\\)"):
        cross_attention(q, k, v[..., :32], cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    with pytest.raises(TypeError, match="one dtype"):
        cross_attention(q, k.half(), v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    with pytest.raises(TypeError, match="q: expected dtype"):
        cross_attention(q.int(), k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    with pytest.raises(ValueError, match="q: expected shape \\[B,H,Nq,d\\]"):
        cross_attention(q, k, v, cu_seqlens_k=cu_k)
    qd = torch.randn(3, 2, 4, 64)
    with pytest.raises(ValueError, match="cu_seqlens_k: expected shape \\[4\\]"):
        cross_attention(qd, k, v, cu_seqlens_k=cu_k)
    with pytest.raises(ValueError, match="k: dim 0 \\(B\\)"):
        cross_attention(qd, torch.randn(2, 2, 5, 64), torch.randn(2, 2, 5, 64))
    with pytest.raises(ValueError, match="softmax_scale"):
        cross_attention(qd, qd, qd, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="max_seqlen_q"):
        cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=-1)



def test_scalar_arguments_accept_numpy_and_reject_wrapped_cu_seqlens():
    np = pytest.importorskip("numpy")
    q = torch.randn(1, 2, 5, 32)
    k = torch.randn(9, 2, 32)
    cu = torch.tensor([0, 9], dtype=torch.int64)
    want = cross_attention(q, k, k, cu_seqlens_k=cu, softmax_scale=0.1)
    got = cross_attention(q, k, k, cu_seqlens_k=cu, max_seqlen_k=np.int64(9), softmax_scale=np.float32(0.1))
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(TypeError, match="softmax_scale"):
        cross_attention(q, k, k, cu_seqlens_k=cu, softmax_scale="0.1")
    with pytest.raises(TypeError, match="max_seqlen_k"):
        cross_attention(q, k, k, cu_seqlens_k=cu, max_seqlen_k=9.0)
    with pytest.raises(ValueError, match="cu_seqlens_k"):  # 9 + 2**32 would wrap to 9 in int32
        cross_attention(q, k, k, cu_seqlens_k=torch.tensor([0, 9 + 2**32]))

# ------------------------------------------------------------------------------------------------
# Triton kernels, interpreted on CPU (fp16 / fp32: the interpreter's bf16 dot is wrong)
# ------------------------------------------------------------------------------------------------
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (3e-3, 6e-3)}


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_dense_interp(dtype, d):
    # 45 queries = 1 full + 1 partial 32-row block; 70 keys = 2 full + 1 partial block
    q, k, v, _, _ = make_inputs("dense", dtype, "cpu", 2, d, [45], [70, 70])
    check(run_and_compare(q, k, v, None, None), *TOL[dtype])


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["qdense_kvar", "varlen", "qvar_kdense"])
def test_varlen_uneven_views_interp(dtype, layout):
    # 1, 3 and 8 "views" of 9 tokens; packed query sets of 1, 63 and 33 rows
    q_lens, k_lens = [1, 63, 33], [9, 27, 72]
    if layout == "qvar_kdense":
        k_lens = [41]
    if layout == "qdense_kvar":
        q_lens = [40]
    q, k, v, cu_q, cu_k = make_inputs(layout, dtype, "cpu", 2, 64, q_lens, k_lens)
    check(run_and_compare(q, k, v, cu_q, cu_k, scale=0.2), *TOL[dtype])


@interp
@pytest.mark.parametrize("nq,nk", [(1, 1369), (63, 1370), (1, 1), (200, 40), (40, 520)])
def test_odd_lengths_and_splits_interp(nq, nk):
    # (200, 40): 7 query blocks split over the dK/dV programs (atomic reduction);
    # (40, 520): 17 key blocks x 4 heads fill the interpreter's 64-program target (plain stores)
    heads = 4 if nk == 520 else 1
    q, k, v, _, _ = make_inputs("dense", torch.float16, "cpu", 1, 64, [nq], [nk])
    q, k, v = q.expand(1, heads, -1, -1), k.expand(1, heads, -1, -1), v.expand(1, heads, -1, -1)
    q = q + 0.1 * torch.randn_like(q)
    check(run_and_compare(q, k, v, None, None), *TOL[torch.float16])


@interp
def test_negative_scale_self_attention_and_empty_interp():
    x = torch.randn(1, 50, 2, 32).transpose(1, 2)  # strided view
    check(run_and_compare(x, x, x, None, None, scale=-0.4), *TOL[torch.float32])
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.float32, "cpu", 2, 32, [3, 0, 5], [4, 6, 0])
    errs = run_and_compare(q, k, v, cu_q, cu_k)
    check(errs, *TOL[torch.float32])


def test_interpreted_kernels():
    """Run the ``*_interp`` tests with TRITON_INTERPRET=1 in a fresh process."""
    if INTERP or torch.cuda.is_available():
        pytest.skip("the *_interp tests run in this process (interpreted) or the cuda tests cover "
                    "the kernels")
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "-k", "interp and not test_interpreted_kernels", __file__],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# CUDA: compiled Triton kernels (run by the lead on the H200)
# ------------------------------------------------------------------------------------------------
def poison_cuda_cache():
    """Fill freed caching-allocator blocks with NaN bit patterns (0xFF..), so an output element the
    kernels never write shows up as NaN."""
    big = torch.full((64 << 20,), -1, dtype=torch.int32, device="cuda")            # 256 MiB
    small = [torch.full((1 << 17,), -1, dtype=torch.int32, device="cuda") for _ in range(32)]
    del big, small


def sdpa_per_batch(q, k, v, cu_q, cu_k, scale):
    """PyTorch SDPA in the input dtype, one call per batch element; same layouts as ours."""
    import torch.nn.functional as F
    batch = (cu_q.numel() - 1) if cu_q is not None else q.shape[0]
    outs = []
    for b in range(batch):
        if cu_q is not None:
            s, e = int(cu_q[b]), int(cu_q[b + 1])
            qb = q[s:e].transpose(0, 1)[None]
        else:
            qb = q[b:b + 1]
        if cu_k is not None:
            s, e = int(cu_k[b]), int(cu_k[b + 1])
            kb, vb = k[s:e].transpose(0, 1)[None], v[s:e].transpose(0, 1)[None]
        else:
            kb, vb = k[b:b + 1], v[b:b + 1]
        o = F.scaled_dot_product_attention(qb, kb, vb, scale=scale)
        outs.append(o[0].transpose(0, 1) if cu_q is not None else o)
    return torch.cat(outs, 0)


def compare_with_sdpa(q, k, v, cu_q, cu_k, scale=None):
    """Ours and SDPA (same dtype) vs the float64 reference: ours <= 2x SDPA's error, all written."""
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    rout, rlse = ref_attention(qd, kd, vd, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                               softmax_scale=scale, return_lse=True)
    go = torch.randn_like(rout)
    (rout * go).sum().backward()
    ref = {"out": rout.detach(), "dq": qd.grad, "dk": kd.grad, "dv": vd.grad}
    res = {}
    for name in ("ours", "sdpa"):
        qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))
        if name == "ours":
            torch.cuda.synchronize()
            poison_cuda_cache()
            out, lse = cross_attention(qs, ks, vs, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                       softmax_scale=scale, return_lse=True)
            assert torch.isfinite(lse).all(), "lse not fully written"
            assert rel(lse, rlse) < 1e-4
        else:
            out = sdpa_per_batch(qs, ks, vs, cu_q, cu_k, scale)
        loss = (out.double() * go).sum()
        if name == "ours":
            poison_cuda_cache()  # gradient buffers too
        loss.backward()
        got = {"out": out, "dq": qs.grad, "dk": ks.grad, "dv": vs.grad}
        if name == "ours":
            for key, t in got.items():
                assert torch.isfinite(t).all(), f"{key}: not every element written (or NaN)"
        res[name] = {key: rel(t, ref[key]) for key, t in got.items()}
    for key in ref:
        e, s = res["ours"][key], res["sdpa"][key]
        if ref[key].abs().max() == 0:  # e.g. dq with a single key: absolute errors, both tiny
            assert e < 1e-3, f"{key}: absolute error {e:.3g} where the exact value is 0"
            continue
        assert e <= 2 * s + 1e-6, f"{key}: error {e:.3g} > 2x SDPA's {s:.3g} ({res})"
    return res


# each (dtype, d, layout) compiles its own kernels (~4 per case): the grid is kept small on purpose
HALF_CASES = [(torch.bfloat16, d, lay) for d in (32, 64, 128) for lay in ("dense", "varlen")] + \
    [(torch.bfloat16, 64, "qdense_kvar"), (torch.float16, 64, "varlen"), (torch.float16, 128, "dense")]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,d,layout", HALF_CASES)
def test_cuda_half_vs_sdpa(dtype, d, layout):
    if layout == "dense":
        q_lens, k_lens = [1370], [1369 * 3] * 2
    elif layout == "varlen":  # 1, 3 and 8 views per avatar
        q_lens, k_lens = [1, 1370, 777], [1369, 3 * 1369, 8 * 1369]
    else:
        q_lens, k_lens = [1023], [1369, 3 * 1369, 8 * 1369]
    q, k, v, cu_q, cu_k = make_inputs(layout, dtype, "cuda", 4, d, q_lens, k_lens)
    compare_with_sdpa(q, k, v, cu_q, cu_k)


@pytest.mark.cuda
@pytest.mark.parametrize("nq,nk", [(1, 1), (1, 1370), (63, 1369), (1370, 63), (1369, 1370)])
def test_cuda_odd_lengths_bf16(nq, nk):
    q, k, v, _, _ = make_inputs("dense", torch.bfloat16, "cuda", 3, 64, [nq], [nk, nk])
    compare_with_sdpa(q, k, v, None, None, scale=0.3)


@pytest.mark.cuda
def test_cuda_long_query_split_backward_bf16():
    # 20,000 queries x (4 views x 1,369) keys: the dK/dV kernel splits the query range (atomics)
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.bfloat16, "cuda", 1, 64, [20000, 5023],
                                      [4 * 1369, 1369])
    compare_with_sdpa(q, k, v, cu_q, cu_k)


@pytest.mark.cuda
@pytest.mark.parametrize("d,layout", [(32, "dense"), (128, "dense"), (64, "varlen"),
                                      (64, "qvar_kdense")])
def test_cuda_fp32_exact(d, layout):
    q_lens, k_lens = ([300], [257, 257]) if layout == "dense" else ([300, 1, 129], [1, 257, 700])
    if layout == "qvar_kdense":
        k_lens = [257]
    q, k, v, cu_q, cu_k = make_inputs(layout, torch.float32, "cuda", 2, d, q_lens, k_lens)
    check(run_and_compare(q, k, v, cu_q, cu_k, scale=-0.2 if d == 32 else None), 1e-5, 1e-4)


@pytest.mark.cuda
def test_cuda_self_attention_strided_empty_bf16():
    x = torch.randn(1, 2000, 4, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    compare_with_sdpa(x, x, x, None, None)
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.float32, "cuda", 2, 64, [3, 0, 70],
                                      [40, 9, 0])
    check(run_and_compare(q, k, v, cu_q, cu_k), 1e-5, 1e-4)  # no queries / no keys


@pytest.mark.cuda
def test_cuda_max_seqlen_given_no_sync():
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.bfloat16, "cuda", 2, 64, [70, 5],
                                      [1369, 3 * 1369])
    a = cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    b = cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=70,
                        max_seqlen_k=3 * 1369)
    assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["dense", "varlen"])
def test_cuda_opcheck(layout):
    q, k, v, cu_q, cu_k = make_inputs(layout, torch.bfloat16, "cuda", 2, 64, [70, 33], [90, 40])
    mq, mk = 70, 90
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), cu_q, cu_k, 2, mq, mk,
            0.125)
    torch.library.opcheck(torch.ops.ffavatar.cross_attention_fwd.default, args,
                          atol=2e-2, rtol=2e-2)


@pytest.mark.cuda
def test_cuda_torch_compile():
    q, k, v, cu_q, cu_k = make_inputs("varlen", torch.bfloat16, "cuda", 2, 64, [300, 70],
                                      [1369, 2 * 1369])

    def f(q, k, v):
        out = cross_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=300,
                              max_seqlen_k=2 * 1369)
        return (out.float() ** 2).sum(), out

    grads, outs = [], []
    for fn in (f, torch.compile(f)):
        ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        loss, out = fn(*ins)
        loss.backward()
        grads.append([t.grad for t in ins])
        outs.append(out.detach())
    # Inductor launches the same kernel with the same config: the forward must match eager (an fp64
    # softmax, from Inductor's fp64 float scalars, would flip bf16 roundings: ~1e-3)
    assert rel(outs[1], outs[0]) < 1e-6
    for a, b in zip(*grads):
        assert rel(b, a) < 1e-2


@pytest.mark.cuda
def test_cuda_sass_uses_wgmma():
    """The bf16 d=64 forward must lower its dots to Hopper wgmma (HGMMA in the SASS)."""
    from ffavatar_kernels.triton.cross_attention import attn_fwd
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("wgmma is a Hopper (sm_90) instruction")
    q, k, v, _, _ = make_inputs("dense", torch.bfloat16, "cuda", 4, 64, [8192], [4096])
    _, _, compiled = attn_fwd(q, k, v, None, None, 1, 8192, 4096, 0.125)  # untuned config
    if compiled is None or not hasattr(compiled, "asm"):
        pytest.skip("this Triton does not return the compiled kernel from a launch")
    try:
        sass = compiled.asm["sass"]
    except Exception as exc:  # cuobjdump/nvdisasm missing
        pytest.skip(f"no SASS available: {exc}")
    n_hgmma = sass.count("HGMMA")
    print(f"forward SASS: {n_hgmma} HGMMA, {sass.count('HMMA')} HMMA, "
          f"{sass.count('MUFU.EX2')} MUFU.EX2; config {getattr(compiled, 'metadata', None)}")
    assert n_hgmma > 0, "no HGMMA (wgmma) in the bf16 d=64 forward SASS"
