"""Reference twin of :func:`ffavatar_kernels.cross_attention`: plain softmax attention in PyTorch.

Differentiable, any device, any floating dtype (computes in the input dtype; pass float64 inputs for
a high-precision reference). Varlen layouts are handled by a Python loop over the batch (it reads
``cu_seqlens`` on the host: a reference, not a fast path).
"""
from __future__ import annotations

import math

import torch


def _segments(cu: torch.Tensor | None, n: int, batch: int) -> list[tuple[int, int]]:
    if cu is None:
        return [(0, n)] * batch
    c = [int(x) for x in cu.tolist()]
    return [(c[i], c[i + 1]) for i in range(len(c) - 1)]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    # q [H,M,d], k [H,N,d], v [H,N,d] -> out [H,M,d], lse [H,M]
    s = torch.matmul(q, k.transpose(-1, -2)) * scale            # [H,M,N]
    lse = torch.logsumexp(s, dim=-1)                             # [H,M]; -inf when N == 0
    if k.shape[-2] == 0:
        return q.new_zeros(q.shape[:-1] + (v.shape[-1],)), lse
    p = torch.exp(s - lse.unsqueeze(-1))
    return torch.matmul(p, v), lse


def cross_attention(
    q: torch.Tensor,  # [B,H,Nq,d] dense, or [total_q,H,d] packed (with cu_seqlens_q)
    k: torch.Tensor,  # [B,H,Nk,d] dense, or [total_k,H,d] varlen bank (with cu_seqlens_k)
    v: torch.Tensor,  # same layout as k
    *,
    cu_seqlens_q: torch.Tensor | None = None,  # [B+1] int, packed queries
    cu_seqlens_k: torch.Tensor | None = None,  # [B+1] int, varlen keys/values
    softmax_scale: float | None = None,
    return_lse: bool = False,
):
    """softmax(q k^T * scale) v per batch element and head; same layouts as the kernel.

    Returns ``out`` (layout of ``q``) or ``(out, lse)`` with the natural-log log-sum-exp of the scaled
    scores, ``[B,H,Nq]`` for dense ``q`` or ``[H,total_q]`` for packed ``q`` (``-inf`` for a query
    with no keys, whose output is 0).
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    if cu_seqlens_q is not None:
        batch = cu_seqlens_q.numel() - 1
    elif cu_seqlens_k is not None:
        batch = cu_seqlens_k.numel() - 1
    else:
        batch = q.shape[0]
    nq = q.shape[0] if cu_seqlens_q is not None else q.shape[2]
    nk = k.shape[0] if cu_seqlens_k is not None else k.shape[2]
    segq = _segments(cu_seqlens_q, nq, batch)
    segk = _segments(cu_seqlens_k, nk, batch)
    outs, lses = [], []
    for b in range(batch):
        qb = q[segq[b][0]:segq[b][1]].transpose(0, 1) if cu_seqlens_q is not None else q[b]
        kb = k[segk[b][0]:segk[b][1]].transpose(0, 1) if cu_seqlens_k is not None else k[b]
        vb = v[segk[b][0]:segk[b][1]].transpose(0, 1) if cu_seqlens_k is not None else v[b]
        o, l = _attend(qb, kb, vb, scale)                        # [H,M,d], [H,M]
        outs.append(o)
        lses.append(l)
    if cu_seqlens_q is not None:
        if batch == 0:
            out = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
            lse = q.new_zeros((q.shape[1], 0))
        else:
            out = torch.cat([o.transpose(0, 1) for o in outs], 0)   # [total_q,H,d]
            lse = torch.cat(lses, 1)                                # [H,total_q]
    else:
        if batch == 0:
            out = q.new_zeros(q.shape[:-1] + (v.shape[-1],))
            lse = q.new_zeros(q.shape[:-1])
        else:
            out = torch.stack(outs, 0)                              # [B,H,Nq,d]
            lse = torch.stack(lses, 0)                              # [B,H,Nq]
    return (out, lse) if return_lse else out
