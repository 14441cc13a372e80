"""Query-Former: its attention vs softmax(QK^T/sqrt(d))V written out, and the varlen batch (avatars
with 1, 3 and 8 views in one call) vs one avatar at a time; fp32 CPU, 1e-5 relative."""
import math

import pytest
import torch

from ffavatar.nn.attention import attention, use_sdpa
from ffavatar.nn.query_former import QFBlock, QueryFormer

DIM, HEADS, KV_DIM, TOKENS, NQ = 64, 2, 48, 16, 96
VIEWS = [1, 3, 8]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _plain_attention(q, k, v):
    """q [H,Nq,d], k/v [H,Nk,d] -> [H,Nq,d]: the textbook formula."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(s, -1) @ v


def _bank(views):
    lens = [v * TOKENS for v in views]
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return torch.randn(sum(lens), KV_DIM), cu


def _block():
    blk = QFBlock(DIM, HEADS, KV_DIM).eval()
    with torch.no_grad():  # non-trivial norms
        for m in (blk.norm1, blk.norm2, blk.norm_kv, blk.norm3):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
    return blk


def test_self_attention_matches_formula():
    blk = _block()
    x = torch.randn(2, NQ, DIM)
    got = blk.self_attn(x)
    d = DIM // HEADS
    want = []
    for b in range(2):
        q, k, v = blk.qkv(blk.norm1(x[b])).split(DIM, -1)                   # [N,C] each
        heads = [t.view(NQ, HEADS, d).transpose(0, 1) for t in (q, k, v)]
        o = _plain_attention(*heads).transpose(0, 1).reshape(NQ, DIM)
        want.append(blk.proj1(o))
    assert _rel(got, torch.stack(want)) < 1e-5


def test_cross_attention_matches_formula_varlen():
    blk = _block()
    bank, cu = _bank(VIEWS)
    x = torch.randn(len(VIEWS), NQ, DIM)
    got = blk.cross_attn(x, bank, cu, None)
    d = DIM // HEADS
    for b in range(len(VIEWS)):
        rows = bank[cu[b]:cu[b + 1]]                                           # this avatar's views
        q = blk.q(blk.norm2(x[b])).view(NQ, HEADS, d).transpose(0, 1)
        k, v = blk.kv(blk.norm_kv(rows)).split(DIM, -1)
        k = k.reshape(-1, HEADS, d).transpose(0, 1)
        v = v.reshape(-1, HEADS, d).transpose(0, 1)
        o = _plain_attention(q, k, v).transpose(0, 1).reshape(NQ, DIM)
        assert _rel(got[b], blk.proj2(o)) < 1e-5


def test_varlen_batch_equals_one_by_one():
    qf = QueryFormer(NQ, DIM, depth=2, heads=HEADS, kv_dim=KV_DIM).eval()
    points = torch.randn(NQ, 3) * 0.1
    bank, cu = _bank(VIEWS)
    with torch.no_grad():
        batched = qf(points, bank, cu)                                       # [3,N,C]
        assert batched.shape == (3, NQ, DIM)
        for b, v in enumerate(VIEWS):
            one_cu = torch.tensor([0, v * TOKENS], dtype=torch.int32)
            single = qf(points, bank[cu[b]:cu[b + 1]], one_cu)
            assert _rel(batched[b], single[0]) < 1e-5
        # each avatar really reads its own rows: changing avatar 1's tokens changes only avatar 1
        bank2 = bank.clone()
        bank2[cu[1]:cu[2]] += torch.randn(cu[2] - cu[1], KV_DIM)
        again = qf(points, bank2, cu)
    assert torch.allclose(again[0], batched[0], atol=1e-6)
    assert torch.allclose(again[2], batched[2], atol=1e-6)
    assert _rel(again[1], batched[1]) > 1e-3


def test_queries_depend_on_points():
    qf = QueryFormer(NQ, DIM, depth=1, heads=HEADS, kv_dim=KV_DIM)
    p = torch.randn(NQ, 3) * 0.1
    a, b = qf.queries(p), qf.queries(p + 0.01)
    assert _rel(a, b) > 1e-4
    with pytest.raises(ValueError, match="points"):
        qf.queries(torch.randn(NQ + 1, 3))


@pytest.mark.parametrize("packed", [False, True])
def test_sdpa_route_matches_kernel(packed):
    """use_sdpa() (the benchmarks' comparator) computes the same attention as the default route."""
    q = torch.randn(3, HEADS, NQ, 32)
    if packed:
        lens = [v * TOKENS for v in VIEWS]
        cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        k, v = torch.randn(sum(lens), HEADS, 32), torch.randn(sum(lens), HEADS, 32)
    else:
        cu, k, v = None, torch.randn(3, HEADS, 40, 32), torch.randn(3, HEADS, 40, 32)
    ours = attention(q, k, v, cu_seqlens_k=cu)
    with use_sdpa(None):
        ref = attention(q, k, v, cu_seqlens_k=cu)
    assert _rel(ours, ref) < 1e-5
    with pytest.raises(ValueError, match="backend"):
        with use_sdpa("nope"):
            pass
