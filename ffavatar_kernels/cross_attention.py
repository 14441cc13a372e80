"""Flash cross-attention (Triton): dense SDPA layout and flash-attn style varlen key/value banks.

Public op: :func:`cross_attention`. :func:`register` defines ``torch.ops.ffavatar.cross_attention_fwd``
/ ``cross_attention_bwd`` (``torch.library.triton_op``, so ``torch.compile`` sees the Triton kernels)
with autograd. Backends:

- CUDA tensors (fp16 / bf16 / fp32): the Triton kernels in ``ffavatar_kernels.triton``; fp16/bf16
  use tensor-core dots with fp32 accumulation; fp32 uses "tf32x3" dots (each operand split into two
  TF32 halves, three tensor-core products: ~1e-6 relative error per product, i.e. fp32-class
  accuracy, never plain TF32), or exact FMA dots with ``FFAVATAR_ATTN_F32_DOT=ieee``.
- CPU tensors with ``TRITON_INTERPRET=1``: the same Triton kernels, interpreted (how CI tests them).
- CPU tensors otherwise, and float64 on any device: an exact chunked PyTorch path computing in fp32
  (float64 for float64 inputs), so the library works everywhere and gradcheck runs.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import operator
from typing import Optional

import torch

from ._api import public_op
from ._validate import check_same_device, check_tensor

try:  # Triton is optional on CPU-only installs (the math path needs none of it)
    from .triton.cross_attention import INTERPRET, attn_fwd
    from .triton.cross_attention_bwd import attn_bwd
    _HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    INTERPRET, attn_fwd, attn_bwd, _HAS_TRITON = False, None, None, False

HEAD_DIMS = (32, 64, 128)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CHUNK_ELEMS = 1 << 24  # scores per chunk of the math path


# ------------------------------------------------------------------------------------------------
# exact PyTorch path (CPU, float64): shape-static, so it also serves as its own fake kernel
# ------------------------------------------------------------------------------------------------
def _pad(x: torch.Tensor, cu: Optional[torch.Tensor], batch: int, max_len: int):
    """[total,H,d] + cu [B+1] -> ([B,H,max_len,d], valid [B,max_len]); dense [B,H,N,d] passes."""
    if cu is None:
        return x, torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
    ar = torch.arange(max_len, device=x.device)
    start = cu[:-1].long()
    valid = ar[None, :] < (cu[1:].long() - start)[:, None]                    # [B,max_len]
    if x.shape[0] == 0:
        return x.new_zeros(batch, x.shape[1], max_len, x.shape[2]), valid
    idx = (start[:, None] + ar[None, :]).clamp(max=x.shape[0] - 1)           # [B,max_len]
    return x[idx].transpose(1, 2), valid                                      # [B,H,max_len,d]


def _unpad_index(cu: torch.Tensor, total: int):
    """Batch index and position in the batch of every packed row: ([total], [total])."""
    r = torch.arange(total, device=cu.device, dtype=torch.long)
    b = torch.searchsorted(cu[1:].long(), r, right=True)
    return b, r - cu.long()[b]


def _unpad(xp: torch.Tensor, cu: Optional[torch.Tensor], total: int) -> torch.Tensor:
    """[B,H,M,d] -> [total,H,d] (inverse of _pad on valid rows); dense passes through."""
    if cu is None:
        return xp
    b, i = _unpad_index(cu, total)
    return xp[b, :, i, :]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk(batch: int, heads: int, mq: int, mk: int) -> int:
    return max(1, min(max(mq, 1), _CHUNK_ELEMS // max(1, batch * heads * max(mk, 1))))


def _math_fwd(q, k, v, cu_q, cu_k, batch, max_q, max_k, scale):
    acc = _acc_dtype(q.dtype)
    qp, _ = _pad(q, cu_q, batch, max_q)
    kp, vk = _pad(k, cu_k, batch, max_k)
    vp, _ = _pad(v, cu_k, batch, max_k)
    qp, kp, vp = qp.to(acc), kp.to(acc), vp.to(acc)
    heads, mq, mk = qp.shape[1], qp.shape[2], kp.shape[2]
    kmask = vk[:, None, None, :]                                              # [B,1,1,Mk]
    outs, lses = [], []
    c = _chunk(batch, heads, mq, mk)
    for s0 in range(0, mq, c):
        sc = torch.matmul(qp[:, :, s0:s0 + c], kp.transpose(-1, -2)) * scale   # [B,H,c,Mk]
        sc = sc.masked_fill(~kmask, float("-inf"))
        lse = torch.logsumexp(sc, dim=-1)                                     # [B,H,c]
        lse_safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
        p = torch.exp(sc - lse_safe.unsqueeze(-1))
        outs.append(torch.matmul(p, vp))
        lses.append(lse)
    if outs:
        out_p, lse_p = torch.cat(outs, 2), torch.cat(lses, 2)
    else:
        out_p = qp.new_zeros(qp.shape)
        lse_p = qp.new_zeros(qp.shape[:3])
    out = _unpad(out_p, cu_q, q.shape[0]).to(q.dtype)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if cu_q is None:
        return out.contiguous(), lse_p.to(lse_dtype).contiguous()
    lse = _unpad(lse_p.unsqueeze(-1), cu_q, q.shape[0])[..., 0].transpose(0, 1)  # [H,total_q]
    return out.contiguous(), lse.to(lse_dtype).contiguous()


def _math_bwd(do, q, k, v, out, lse, dlse, cu_q, cu_k, batch, max_q, max_k, scale):
    acc = _acc_dtype(q.dtype)
    qp, vq = _pad(q, cu_q, batch, max_q)
    dop, _ = _pad(do, cu_q, batch, max_q)
    op, _ = _pad(out, cu_q, batch, max_q)
    kp, vk = _pad(k, cu_k, batch, max_k)
    vp, _ = _pad(v, cu_k, batch, max_k)
    if cu_q is None:
        lp = lse
        dlp = dlse
    else:  # [H,total_q] -> [B,H,Mq] via the same padding as the rows
        lp = _pad(lse.transpose(0, 1).unsqueeze(-1), cu_q, batch, max_q)[0][..., 0]
        dlp = None if dlse is None else \
            _pad(dlse.transpose(0, 1).unsqueeze(-1), cu_q, batch, max_q)[0][..., 0]
    qp, dop, op, kp, vp, lp = (t.to(acc) for t in (qp, dop, op, kp, vp, lp))
    # padding rows (clamped copies of real rows) and queries without keys get p = 0
    lp = torch.where(vq[:, None, :] & ~torch.isinf(lp), lp, torch.full_like(lp, float("inf")))
    heads, mq, mk = qp.shape[1], qp.shape[2], kp.shape[2]
    kmask = vk[:, None, None, :]
    delta = (dop * op).sum(-1)                                                # [B,H,Mq]
    if dlp is not None:
        delta = delta - dlp.to(acc)
    dk = torch.zeros_like(kp)
    dv = torch.zeros_like(vp)
    dqs = []
    c = _chunk(batch, heads, mq, mk)
    for s0 in range(0, mq, c):
        qc, doc = qp[:, :, s0:s0 + c], dop[:, :, s0:s0 + c]
        lc = lp[:, :, s0:s0 + c]
        sc = torch.matmul(qc, kp.transpose(-1, -2)) * scale
        p = torch.exp(sc - lc.unsqueeze(-1)).masked_fill(~kmask, 0.0)          # [B,H,c,Mk]
        dv = dv + torch.matmul(p.transpose(-1, -2), doc)
        dp = torch.matmul(doc, vp.transpose(-1, -2))
        ds = p * (dp - delta[:, :, s0:s0 + c].unsqueeze(-1))
        dqs.append(torch.matmul(ds, kp) * scale)
        dk = dk + torch.matmul(ds.transpose(-1, -2), qc) * scale
    dq_p = torch.cat(dqs, 2) if dqs else qp.new_zeros(qp.shape)
    dq = _unpad(dq_p, cu_q, q.shape[0]).to(q.dtype).contiguous()
    dk = _unpad(dk, cu_k, k.shape[0]).to(k.dtype).contiguous()
    dv = _unpad(dv, cu_k, v.shape[0]).to(v.dtype).contiguous()
    return dq, dk, dv


_FORCE_MATH = False


@contextlib.contextmanager
def force_math_path():
    """Within this context every call takes the exact PyTorch path (tests of that path under
    TRITON_INTERPRET=1, where CPU tensors would otherwise go to the interpreted kernels)."""
    global _FORCE_MATH
    prev, _FORCE_MATH = _FORCE_MATH, True
    try:
        yield
    finally:
        _FORCE_MATH = prev


def _use_math(q: torch.Tensor) -> bool:
    return _FORCE_MATH or (not _HAS_TRITON) or q.dtype == torch.float64 or (q.device.type == "cpu" and not INTERPRET)


# ------------------------------------------------------------------------------------------------
# registration (the op anatomy's register(): called once by the package's __init__)
# ------------------------------------------------------------------------------------------------
def _fwd_impl(
    q: torch.Tensor,                       # [B,H,Nq,d] or [total_q,H,d]
    k: torch.Tensor,                       # [B,H,Nk,d] or [total_k,H,d]
    v: torch.Tensor,                       # same layout as k
    cu_seqlens_q: Optional[torch.Tensor],  # [B+1] int32 or None
    cu_seqlens_k: Optional[torch.Tensor],  # [B+1] int32 or None
    batch: int, max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_math(q):
        return _math_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q, max_seqlen_k,
                         softmax_scale)
    out, lse, _ = attn_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, batch, max_seqlen_q, max_seqlen_k,
                           softmax_scale, launch=torch.library.wrap_triton)
    return out, lse


def _bwd_impl(
    dout: torch.Tensor,                    # like q
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor,                     # like q
    lse: torch.Tensor,                     # [B,H,Nq] or [H,total_q]
    dlse: Optional[torch.Tensor],          # like lse, or None
    cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
    batch: int, max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_math(q):
        return _math_bwd(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, batch,
                         max_seqlen_q, max_seqlen_k, softmax_scale)
    return attn_bwd(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, batch,
                    max_seqlen_q, max_seqlen_k, softmax_scale, launch=torch.library.wrap_triton)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, batch, max_q, max_k, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.meta = (batch, max_q, max_k, scale)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    batch, max_q, max_k, scale = ctx.meta
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.ffavatar.cross_attention_bwd(
        dout, q, k, v, out, lse, dlse, cu_q, cu_k, batch, max_q, max_k, scale)
    return dq, dk, dv, None, None, None, None, None, None


_REGISTERED = False


def register() -> None:
    """Define the ops (``triton_op``: torch.compile sees the Triton kernels; ``custom_op`` where
    Triton is missing) and attach autograd, once. The exact math path is shape-static, so the op
    needs no separate fake kernel."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    define = torch.library.triton_op if _HAS_TRITON else torch.library.custom_op
    define("ffavatar::cross_attention_fwd", mutates_args=())(_fwd_impl)
    define("ffavatar::cross_attention_bwd", mutates_args=())(_bwd_impl)
    torch.library.register_autograd("ffavatar::cross_attention_fwd", _backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def _check_cu(name: str, cu, device, total: int, total_name: str, max_given):
    """Validate cu_seqlens [B+1]; return (int32 tensor, max length or None if not host-visible)."""
    check_tensor(name, cu, (None,), dtype=(torch.int32, torch.int64))
    if cu.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of q), got one on "
                         f"{cu.device}")
    if cu.numel() < 1:
        raise ValueError(f"{name}: expected shape [B+1] with B >= 0, got {list(cu.shape)}")
    if max_given is not None and cu.device.type != "cpu":
        return cu.to(torch.int32).contiguous(), None  # trusted: reading it would be a host sync
    vals = cu.tolist()  # read before the int32 cast, so an int64 value past 2**31 is not wrapped
    if max(vals) >= 2**31:
        raise ValueError(f"{name}: values must fit int32, got {max(vals)}")
    cu = cu.to(torch.int32).contiguous()
    if vals[0] != 0:
        raise ValueError(f"{name}: must start at 0, got {vals[0]}")
    for i in range(len(vals) - 1):
        if vals[i + 1] < vals[i]:
            raise ValueError(f"{name}: must be non-decreasing, got {name}[{i}]={vals[i]} > "
                             f"{name}[{i + 1}]={vals[i + 1]}")
    if vals[-1] != total:
        raise ValueError(f"{name}: last entry must equal {total_name}={total}, got {vals[-1]}")
    longest = max((vals[i + 1] - vals[i] for i in range(len(vals) - 1)), default=0)
    if max_given is not None and max_given < longest:
        raise ValueError(f"{name}: the longest sequence has {longest} rows but the given max "
                         f"length is {max_given}")
    return cu, longest


def _check_max(name: str, value):
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # ints and numpy/torch integer scalars
    except TypeError:
        raise TypeError(f"{name}: expected a non-negative int, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value}")
    return value


@public_op("cross_attention")
def cross_attention(
    q: torch.Tensor,  # [B,H,Nq,d] dense, or [total_q,H,d] packed (then cu_seqlens_q is given)
    k: torch.Tensor,  # [B,H,Nk,d] dense, or [total_k,H,d] varlen bank (then cu_seqlens_k is given)
    v: torch.Tensor,  # same layout and shape as k
    *,
    cu_seqlens_q: Optional[torch.Tensor] = None,  # [B+1] int32, packed queries
    cu_seqlens_k: Optional[torch.Tensor] = None,  # [B+1] int32, varlen keys/values
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
):
    """Flash attention ``softmax(q k^T * softmax_scale) v`` per batch element and head.

    Dense inputs follow ``torch.nn.functional.scaled_dot_product_attention`` (``[B,H,N,d]``, no
    mask); varlen inputs follow flash-attn: batch element ``b`` owns rows
    ``cu_seqlens[b]:cu_seqlens[b+1]`` of a packed ``[total,H,d]`` tensor (e.g. the key/value token
    bank of V_b views x 1,369 tokens per avatar). Queries and keys may be dense or packed
    independently; for self-attention pass the same tensor as q and k (and v).

    Args:
        q, k, v: fp16, bf16 or fp32 (float64 runs the exact PyTorch path), head dim 32, 64 or 128,
            one dtype, one device. Any strides with a unit head-dim stride run without copies.
        cu_seqlens_q, cu_seqlens_k: int32 (int64 accepted) cumulative lengths, starting at 0,
            non-decreasing, ending at ``total``. Validated on the host unless they live on the GPU
            and the matching ``max_seqlen_*`` is given (then they are trusted: no host sync).
        max_seqlen_q, max_seqlen_k: longest sequence; computed from ``cu_seqlens`` if omitted.
        softmax_scale: default ``1/sqrt(d)``; any finite value (negative is fine).
        return_lse: also return the natural-log log-sum-exp of the scaled scores (differentiable).

    Returns:
        ``out`` with the layout and shape of ``q``, or ``(out, lse)`` with ``lse`` float32
        ``[B,H,Nq]`` (dense q) or ``[H,total_q]`` (packed q); a query with no keys gets out = 0
        and lse = -inf.
    """
    check_tensor("q", q, dtype=_DTYPES)
    check_tensor("k", k, dtype=_DTYPES)
    check_tensor("v", v, dtype=_DTYPES)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v: expected one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    device = check_same_device(q=q, k=k, v=v)
    packed_q, packed_k = cu_seqlens_q is not None, cu_seqlens_k is not None
    sizes: dict = {}
    if packed_q:
        check_tensor("q", q, ("total_q", "H", "d"), sizes=sizes)
    else:
        check_tensor("q", q, ("B", "H", "Nq", "d"), sizes=sizes)
    if packed_k:
        check_tensor("k", k, ("total_k", "H", "d"), sizes=sizes)
        check_tensor("v", v, ("total_k", "H", "d"), sizes=sizes)
    else:
        check_tensor("k", k, ("B", "H", "Nk", "d"), sizes=sizes)
        check_tensor("v", v, ("B", "H", "Nk", "d"), sizes=sizes)
    d = sizes["d"]
    if d not in HEAD_DIMS:
        raise ValueError(f"q: head dim must be one of {HEAD_DIMS}, got {d}")
    max_seqlen_q = _check_max("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _check_max("max_seqlen_k", max_seqlen_k)
    batch = None
    if packed_q:
        cu_seqlens_q, longest = _check_cu("cu_seqlens_q", cu_seqlens_q, device, q.shape[0],
                                          "total_q (q.shape[0])", max_seqlen_q)
        batch = cu_seqlens_q.numel() - 1
        max_q = max_seqlen_q if max_seqlen_q is not None else longest
    else:
        batch = q.shape[0]
        max_q = q.shape[2]
    if packed_k:
        cu_seqlens_k, longest = _check_cu("cu_seqlens_k", cu_seqlens_k, device, k.shape[0],
                                          "total_k (k.shape[0])", max_seqlen_k)
        if cu_seqlens_k.numel() - 1 != batch:
            src = "cu_seqlens_q" if packed_q else "q.shape[0]"
            raise ValueError(f"cu_seqlens_k: expected shape [{batch + 1}] (batch {batch} from "
                             f"{src}), got {list(cu_seqlens_k.shape)}")
        max_k = max_seqlen_k if max_seqlen_k is not None else longest
    else:
        if k.shape[0] != batch:
            raise ValueError(f"k: expected batch {batch} (from cu_seqlens_q), got shape "
                             f"{list(k.shape)}")
        max_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    if isinstance(scale, (bool, torch.Tensor)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"softmax_scale: expected a finite float, got {softmax_scale!r}")
    scale = float(scale)  # numpy scalars included
    if not math.isfinite(scale):
        raise ValueError(f"softmax_scale: expected a finite float, got {softmax_scale!r}")
    if batch * sizes["H"] > 65535:  # grid axis 1 of the kernels
        raise ValueError(f"q: batch x heads must be <= 65535, got {batch} x {sizes['H']}")
    out, lse = torch.ops.ffavatar.cross_attention_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(batch), int(max_q), int(max_k), float(scale))
    return (out, lse) if return_lse else out


__all__ = ["cross_attention", "HEAD_DIMS"]
