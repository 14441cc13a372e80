"""The one attention entry point of the network: every module of ``ffavatar.nn`` calls
:func:`attention`.

By default it runs ``ffavatar_kernels.cross_attention`` (flash attention in Triton on the GPU; on CPU
the kernel package's exact PyTorch path, never the Triton interpreter, so the model stays fast on a
laptop even where a test session sets ``TRITON_INTERPRET=1``; a backward pass runs later, outside
this function, so a test that trains on CPU under ``TRITON_INTERPRET=1`` wraps its steps in
``ffavatar_kernels.cross_attention.force_math_path()``). Inside :func:`use_sdpa` it routes to
``torch.nn.functional.scaled_dot_product_attention`` instead (one call per avatar for a varlen bank),
which is how the benchmarks compare the whole model against cuDNN / flash SDPA in one process.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

from ffavatar_kernels.cross_attention import cross_attention, force_math_path

_SDPA_BACKEND: "object | None" = None  # None: our kernel; else a torch.nn.attention.SDPBackend
_USE_SDPA = False


@contextlib.contextmanager
def use_sdpa(backend: "str | None" = "cudnn"):
    """Route every :func:`attention` call to PyTorch SDPA within the context.

    Args:
        backend: ``"cudnn"``, ``"flash"``, ``"efficient"``, ``"math"`` (one SDPA backend, forced with
            ``torch.nn.attention.sdpa_kernel``) or ``None`` (let PyTorch choose).
    """
    global _USE_SDPA, _SDPA_BACKEND
    chosen = None
    if backend is not None:
        from torch.nn.attention import SDPBackend
        names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        if backend not in names:
            raise ValueError(f"backend: expected one of {sorted(names)} or None, got {backend!r}")
        chosen = names[backend]
    prev = (_USE_SDPA, _SDPA_BACKEND)
    _USE_SDPA, _SDPA_BACKEND = True, chosen
    try:
        yield
    finally:
        _USE_SDPA, _SDPA_BACKEND = prev


def sdpa_active() -> bool:
    """True inside :func:`use_sdpa`."""
    return _USE_SDPA


def _sdpa(q, k, v, scale):
    if _SDPA_BACKEND is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(_SDPA_BACKEND):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def attention(
    q: torch.Tensor,                               # [B,H,Nq,d]
    k: torch.Tensor,                               # [B,H,Nk,d] dense, or [total_k,H,d] packed bank
    v: torch.Tensor,                               # same layout as k
    *,
    cu_seqlens_k: Optional[torch.Tensor] = None,   # [B+1] int32 for a packed bank
    max_seqlen_k: Optional[int] = None,
    softmax_scale: Optional[float] = None,
) -> torch.Tensor:                                 # [B,H,Nq,d]
    """``softmax(q k^T * scale) v`` per batch element and head (``scale`` defaults to 1/sqrt(d)).

    Self-attention passes the same tokens' projections as q, k and v (dense). Cross-attention into
    the multi-view bank passes ``k``, ``v`` packed ``[total_k,H,d]`` with ``cu_seqlens_k``: avatar
    ``b`` owns rows ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` (its views' tokens), no padding.
    """
    if not _USE_SDPA:
        if q.device.type == "cpu":
            with force_math_path():
                return cross_attention(q, k, v, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
                                       softmax_scale=softmax_scale)
        return cross_attention(q, k, v, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
                               softmax_scale=softmax_scale)
    if cu_seqlens_k is None:
        return _sdpa(q, k, v, softmax_scale)
    bounds = cu_seqlens_k.tolist()  # a host sync: fine for the comparator path
    outs = []
    for b in range(len(bounds) - 1):  # one SDPA call per avatar: its views' tokens as keys
        kb = k[bounds[b]:bounds[b + 1]].transpose(0, 1)[None]  # [1,H,Nk_b,d]
        vb = v[bounds[b]:bounds[b + 1]].transpose(0, 1)[None]
        outs.append(_sdpa(q[b:b + 1], kb, vb, softmax_scale))
    return torch.cat(outs, 0)


__all__ = ["attention", "use_sdpa", "sdpa_active"]
