"""Reliability of `cross_attention` (issue 19, item 1): the validation matrix.

Wrong rank / shape, dtype, mixed devices ('meta' tensors stand in for a second device on a CPU-only
machine; the `cuda` tests use a real one), non-contiguous and expanded views (same result as
contiguous inputs), empty tensors (empty outputs), NaN / Inf inputs (a defined output, never a
crash). Every error case asserts the error type and that the message names the argument.
"""

import pytest
import torch

from ffavatar_kernels import _ext
from ffavatar_kernels.cross_attention import cross_attention, force_math_path
from reliability_helpers import INF, INTERP, NAN, NONFINITE, _raises

pytestmark = pytest.mark.skipif(not _ext.load(), reason="compiled extension not built")


# ================================================================================================
# cross_attention
# ================================================================================================
def _qkv(B=2, H=2, Nq=5, Nk=7, d=32, dtype=torch.float32):
    return (torch.randn(B, H, Nq, d, dtype=dtype), torch.randn(B, H, Nk, d, dtype=dtype),
            torch.randn(B, H, Nk, d, dtype=dtype))


def _packed(total_q=5, total_k=7, H=2, d=32):
    cu_q = torch.tensor([0, 2, total_q], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, total_k], dtype=torch.int32)
    return torch.randn(total_q, H, d), torch.randn(total_k, H, d), torch.randn(total_k, H, d), cu_q, cu_k


def _att_bad():
    q, k, v = _qkv()
    pq, pk, pv, cu_q, cu_k = _packed()
    i32 = lambda *x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return [
        ("q_3d_dense", lambda: cross_attention(q[0], k, v), ValueError, "q"),
        ("q_5d", lambda: cross_attention(q[None], k, v), ValueError, "q"),
        ("k_3d_dense", lambda: cross_attention(q, k[0], v), ValueError, "k"),
        ("v_wrong_Nk", lambda: cross_attention(q, k, v[:, :, :3]), ValueError, "v"),
        ("k_wrong_H", lambda: cross_attention(q, k[:, :1], v[:, :1]), ValueError, "k"),
        ("k_wrong_B", lambda: cross_attention(q, k[:1], v[:1]), ValueError, "k"),
        ("k_wrong_d", lambda: cross_attention(q, torch.randn(2, 2, 7, 64), torch.randn(2, 2, 7, 64)), ValueError, "k"),
        ("head_dim_16", lambda: cross_attention(q[..., :16], k[..., :16], v[..., :16]), ValueError, "q"),
        ("q_int", lambda: cross_attention(q.long(), k, v), TypeError, "q"),
        ("k_bool", lambda: cross_attention(q, k > 0, v), TypeError, "k"),
        ("mixed_dtypes", lambda: cross_attention(q, k.half(), v), TypeError, "k"),
        ("q_list", lambda: cross_attention(q.tolist(), k, v), TypeError, "q"),
        ("v_numpy", lambda: cross_attention(q, k, v.numpy()), TypeError, "v"),
        ("k_meta", lambda: cross_attention(q, k.to("meta"), v), ValueError, "k on meta"),
        ("v_meta", lambda: cross_attention(q, k, v.to("meta")), ValueError, "v on meta"),
        ("batch_x_heads", lambda: cross_attention(torch.randn(65536, 1, 1, 32), torch.randn(65536, 1, 1, 32),
                                                  torch.randn(65536, 1, 1, 32)), ValueError, "q"),
        ("softmax_scale_nan", lambda: cross_attention(q, k, v, softmax_scale=NAN), ValueError, "softmax_scale"),
        ("softmax_scale_inf", lambda: cross_attention(q, k, v, softmax_scale=INF), ValueError, "softmax_scale"),
        ("softmax_scale_str", lambda: cross_attention(q, k, v, softmax_scale="1"), TypeError, "softmax_scale"),
        ("softmax_scale_tensor", lambda: cross_attention(q, k, v, softmax_scale=torch.tensor(1.0)), TypeError,
         "softmax_scale"),
        ("max_seqlen_negative", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                                        max_seqlen_q=-1), ValueError, "max_seqlen_q"),
        ("max_seqlen_float", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                                     max_seqlen_k=3.0), TypeError, "max_seqlen_k"),
        ("max_seqlen_bool", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                                    max_seqlen_k=True), TypeError, "max_seqlen_k"),
        ("max_seqlen_too_small", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                                         max_seqlen_k=2), ValueError, "cu_seqlens_k"),
        ("cu_2d", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q[None], cu_seqlens_k=cu_k), ValueError,
         "cu_seqlens_q"),
        ("cu_empty", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q[:0], cu_seqlens_k=cu_k), ValueError,
         "cu_seqlens_q"),
        ("cu_float", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k.float()), TypeError,
         "cu_seqlens_k"),
        ("cu_start", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=i32(1, 2, 5), cu_seqlens_k=cu_k), ValueError,
         "cu_seqlens_q"),
        ("cu_negative", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=i32(0, -1, 5), cu_seqlens_k=cu_k),
         ValueError, "cu_seqlens_q"),
        ("cu_end", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=i32(0, 3, 6)), ValueError,
         "cu_seqlens_k"),
        ("cu_batch", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=i32(0, 7)), ValueError,
         "cu_seqlens_k"),
        ("cu_past_int32", lambda: cross_attention(q, pk, pv, cu_seqlens_k=torch.tensor([0, 3, 7 + 2**32])),
         ValueError, "cu_seqlens_k"),
        ("cu_meta", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k.to("meta")), ValueError,
         "cu_seqlens_k"),
        ("cu_list", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=[0, 2, 5], cu_seqlens_k=cu_k), TypeError,
         "cu_seqlens_q"),
        ("packed_q_rank", lambda: cross_attention(q, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k), ValueError, "q"),
    ]


ATT_BAD_IDS = [c[0] for c in _att_bad()]


@pytest.mark.parametrize("i", range(len(ATT_BAD_IDS)), ids=ATT_BAD_IDS)
def test_cross_attention_bad_arguments(i):
    case, fn, exc, name = _att_bad()[i]
    _raises(exc, name, fn)


@pytest.fixture(params=["math", pytest.param("triton_interp", marks=pytest.mark.skipif(
    not INTERP, reason="needs TRITON_INTERPRET=1 (set by conftest without a GPU)"))])
def att_path(request):
    """The CPU paths: the exact PyTorch path and the interpreted Triton kernels."""
    if request.param == "math":
        with force_math_path():
            yield request.param
    else:
        yield request.param


def test_cross_attention_views_equal_contiguous(att_path):
    q, k, v = _qkv(B=2, H=2, Nq=9, Nk=11, d=32)
    want = cross_attention(q, k, v, return_lse=True)
    qs = q.transpose(1, 2).contiguous().transpose(1, 2)                         # [B,N,H,d] storage
    kv = torch.stack([k, v], 0).transpose(0, 3).contiguous().transpose(0, 3)     # interleaved k / v
    ks, vs = kv[0], kv[1]
    assert not qs.is_contiguous() and not ks.is_contiguous()
    got = cross_attention(qs, ks, vs, return_lse=True)
    assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1], atol=1e-6)
    # non-unit head-dim stride (copied by the op) and expanded keys shared by the batch
    qw = torch.stack([q, q], -1)[..., 0]
    got = cross_attention(qw, k, v)
    assert torch.allclose(got, want[0], atol=1e-6)
    ke, ve = k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1)
    got = cross_attention(q, ke, ve)
    want_e = cross_attention(q, ke.contiguous(), ve.contiguous())
    assert torch.allclose(got, want_e, atol=1e-6) and torch.allclose(got[1], cross_attention(q[1:], k[:1], v[:1])[0],
                                                                     atol=1e-6)


@pytest.mark.parametrize("shape", ["B0", "H0", "Nq0", "Nk0", "packed_total0"])
def test_cross_attention_empty(att_path, shape):
    if shape == "packed_total0":
        q, k = torch.randn(0, 2, 32), torch.randn(0, 2, 32)
        z = torch.zeros(3, dtype=torch.int32)
        out, lse = cross_attention(q, k, k, cu_seqlens_q=z, cu_seqlens_k=z, return_lse=True)
        assert out.shape == (0, 2, 32) and lse.shape == (2, 0)
        return
    dims = dict(B=2, H=2, Nq=5, Nk=7)
    dims[shape[:-1]] = 0
    q, k, v = _qkv(**dims)
    q.requires_grad_(True)
    out, lse = cross_attention(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    if shape == "Nk0":  # no keys: out = 0, lse = -inf
        assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    out.sum().backward()
    assert q.grad.shape == q.shape and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_cross_attention_nonfinite_inputs(att_path, which, value):
    """Defined output, never a crash: the non-finite value stays inside its (batch, head) pair; a
    NaN reaches exactly the outputs that depend on it (q: its query row; k: every query of the pair;
    v: its channel of every query of the pair)."""
    q, k, v = _qkv()
    clean = cross_attention(q, k, v, return_lse=True)
    t = {"q": q, "k": k, "v": v}[which]
    t[0, 0, 0, 0] = value
    for g in (q, k, v):
        g.requires_grad_(True)
    out, lse = cross_attention(q, k, v, return_lse=True)
    other = (slice(None), slice(1, None))  # head 1 of every batch element, and batch 1
    assert torch.allclose(out[other], clean[0][other], atol=1e-6) and torch.allclose(out[1], clean[0][1], atol=1e-6)
    assert torch.allclose(lse[1], clean[1][1], atol=1e-6)
    bad = ~torch.isfinite(out[0, 0])
    if value != value:  # NaN: exactly its dependants
        want = torch.zeros_like(bad)
        if which == "q":
            want[0] = True
        elif which == "k":
            want[:] = True
        else:
            want[:, 0] = True
        assert torch.equal(bad, want)
    elif which != "k":  # an infinite key only matters for the queries whose score it makes +inf (sign of q)
        assert bad.any()
    (out.nan_to_num().sum()).backward()  # gradients through non-finite values: no crash
    for g in (q, k, v):
        assert g.grad.shape == g.shape and torch.isfinite(g.grad[1]).all()


@pytest.mark.cuda
def test_cross_attention_cuda_cpu_mixed_devices():
    q, k, v = (t.cuda() for t in _qkv())
    _raises(ValueError, "k on cpu", lambda: cross_attention(q, k.cpu(), v))
    _raises(ValueError, "v on cpu", lambda: cross_attention(q, k, v.cpu()))
    pq, pk, pv, cu_q, cu_k = (t.cuda() for t in _packed())
    _raises(ValueError, "cu_seqlens_k", lambda: cross_attention(pq, pk, pv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k.cpu()))
    _raises(TypeError, "q", lambda: cross_attention(q.long(), k, v))
    qn = q.clone()
    qn[0, 0, 0, 0] = NAN
    out = cross_attention(qn, k, v)
    assert torch.isfinite(out[1]).all() and not torch.isfinite(out[0, 0, 0]).all()
