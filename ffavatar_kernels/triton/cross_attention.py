"""Flash cross-attention forward in Triton (dense SDPA layout and varlen key/value banks).

Layouts (head-dim stride must be 1; other strides are free, so transposed views need no copy):

- dense  ``[B,H,N,d]``: per (b, h) the rows start at ``b*s_b + h*s_h`` with row stride ``s_n``;
- packed ``[total,H,d]`` with ``cu_seqlens [B+1]``: batch ``b`` owns rows ``cu[b]..cu[b+1]``; the kernel
  gets ``s_b = 0`` and adds ``cu[b]*s_n``.

Online softmax in the exp2 domain: ``p = exp2(s*qk_scale - m)`` with ``qk_scale = scale*log2(e)``
applied to the fp32 scores as one FMA together with the max subtraction (folding it into ``q`` would
round ``q*scale`` to bf16 and cost accuracy for no speed: the FMA is needed anyway). ``qk_scale`` must
be >= 0; the launcher negates ``q`` (exact) for a negative scale. Key blocks are split into interior
blocks (no masks) and at most one masked tail block. lse is stored in natural log units.

Autotuning (Hopper, H200): key = (HEAD_DIM, NQ_BUCKET, NK_BUCKET) plus the tensor dtypes, which
Triton's autotuner appends to the key itself. Candidates and why:

- BLOCK_M 128 / BLOCK_N 64-128 / 4-8 warps: one or two warpgroups issue m64nNk16 wgmma for the
  128-row Q tile; K/V tiles of 64-128 rows keep 3-4 stages of K+V in shared memory (d=64 bf16:
  32 KiB per stage at BLOCK_N 128).
- BLOCK_M 256 / 8 warps (d <= 64 only): halves the K/V re-reads from L2 for 81K queries; each warp
  group owns 128 rows, so registers stay at ~ 64 (acc) + 64 (scores) per thread.
- BLOCK_M 64: short query sets (a few thousand queries x 16 heads) fill 132 SMs only with small
  tiles.

Under ``TRITON_INTERPRET=1`` (CPU tests) a single small config is used, so partial blocks in both
dimensions and multi-block loops are exercised on tiny inputs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _env as env

INTERPRET = env.triton_interpret()
LOG2E = 1.4426950408889634
# fp32 inputs: "tf32x3" splits each operand into two tf32 halves (3 tensor-core dots, relative error
# ~1e-6 per product: fp32-class accuracy at tensor-core speed); FFAVATAR_ATTN_F32_DOT=ieee selects
# exact FMA dots (slow on GPUs, register-hungry). Read at every launch (a constexpr argument of the
# kernels: each value compiles once). fp16 / bf16 dots ignore it.


def f32_dot() -> str:
    """The fp32 dot precision of this launch ("tf32x3" or "ieee", FFAVATAR_ATTN_F32_DOT)."""
    return env.attn_f32_dot()


# Problems below this many scores (batch*heads*max_q*max_k) use a fixed config per head dim:
# autotuning them would cost more (16 compiles + timing runs per dtype/layout) than it saves.
AUTOTUNE_MIN_SCORES = 1 << 28


def use_autotune(batch: int, heads: int, max_q: int, max_k: int) -> bool:
    """Autotune big problems only; FFAVATAR_ATTN_AUTOTUNE=0/1 forces never/always. Never under
    torch.use_deterministic_algorithms(True): the tuned choice can differ between processes, and
    with the block sizes the order of the sums."""
    if INTERPRET or torch.are_deterministic_algorithms_enabled():
        return False
    mode = env.attn_autotune()
    if mode in ("0", "1"):
        return mode == "1"
    return batch * heads * max_q * max_k >= AUTOTUNE_MIN_SCORES


def fixed_config(table: dict, d: int) -> dict:
    """Launch kwargs of the untuned path: the table entry for head dim d (the interpreter: tiny)."""
    if INTERPRET:
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    m, n, w, s = table[64 if d <= 64 else 128]
    return dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)


_FIXED_KERNELS: dict = {}


def fixed_kernel(jit_fn, table: dict, d: int):
    """``jit_fn`` wrapped as a one-config autotuner (no timing runs) with the table's config for d.

    A single-config Autotuner rather than launch kwargs (num_warps=...), so that the launch looks
    the same to torch.compile on both paths."""
    cfg = fixed_config(table, d)
    key = (jit_fn, tuple(sorted(cfg.items())))
    if key not in _FIXED_KERNELS:
        conf = triton.Config({"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]},
                             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        _FIXED_KERNELS[key] = triton.autotune(configs=[conf], key=[])(jit_fn)
    return _FIXED_KERNELS[key]


# untuned forward: 128-row Q tile (one warpgroup of m64 wgmma pairs), 64-key tiles, 3 stages
FWD_FIXED = {64: (128, 64, 4, 3), 128: (128, 64, 8, 3)}
# fp32 (tf32x3: three dots per product, operands split in registers) is never autotuned: it is the
# precision path. These tiles keep register spills small for the split operands (checked in SASS).
FWD_FIXED_F32 = {64: (128, 64, 8, 2), 128: (64, 64, 4, 1)}


def length_bucket(n: int) -> int:
    """Autotune bucket of a sequence length: next power of two, at least 16, at most 2^17."""
    return min(max(16, triton.next_power_of_2(max(int(n), 1))), 1 << 17)


def _fwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    shapes = [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (256, 64, 8, 3), (64, 64, 4, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in shapes]


def _shape(c) -> tuple:
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


def prune_by_head_dim(allowed_128: set):
    """early_config_prune keeping, for d=128, only the candidates compiled without (large) register
    spills or shared-memory overflow for sm_90 (checked with triton.compile, see notes)."""
    def prune(configs, named_args, **kwargs):
        d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 64))
        if d <= 64:
            return [c for c in configs if _shape(c) not in _ONLY_128] or configs[:1]
        return [c for c in configs if _shape(c) in allowed_128] or configs[:1]
    return prune


_ONLY_128 = {(32, 128, 8, 2), (128, 32, 8, 2)}  # d=128 variants of the d<=64 candidates
_prune_fwd = prune_by_head_dim({(128, 128, 8, 3), (128, 64, 8, 3), (64, 64, 4, 4)})


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, lo, hi, k_len, qk_scale,
               offs_n, offs_d, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, FP32: tl.constexpr,
               F32_DOT: tl.constexpr):
    """One pass over key blocks [lo, hi): online-softmax update of acc/l_i/m_i."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n                                              # [BLOCK_N]
        k_ptrs = k_base + cols[:, None] * s_kn + offs_d[None, :]
        v_ptrs = v_base + cols[:, None] * s_vn + offs_d[None, :]
        if MASK_N:
            k = tl.load(k_ptrs, mask=cols[:, None] < k_len, other=0.0)      # [BLOCK_N, D]
        else:
            k = tl.load(k_ptrs)
        if FP32:
            s = tl.dot(q, tl.trans(k), input_precision=F32_DOT)               # [BLOCK_M, BLOCK_N]
        else:
            s = tl.dot(q, tl.trans(k))
        if MASK_N:
            s = tl.where(cols[None, :] < k_len, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASK_N:
            v = tl.load(v_ptrs, mask=cols[:, None] < k_len, other=0.0)      # [BLOCK_N, D]
        else:
            v = tl.load(v_ptrs)
        if FP32:
            acc = tl.dot(p, v, acc, input_precision=F32_DOT)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


# The varlen prologue (a sequence's start and length from cu_seqlens, or the dense sequence) is written
# inline in each kernel, not as a shared @triton.jit helper: torch.compile's mutation analysis of
# Triton kernels treats a pointer passed into a called jit function as written, and the dense
# layout passes `lse` (an output) as the unused cu_seqlens pointer (opcheck's aot_dispatch fails).
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om, s_lb, s_lh, s_lm,
    H, N_Q, N_K, qk_scale, NQ_BUCKET, NK_BUCKET,
    HEAD_DIM: tl.constexpr, VARLEN_Q: tl.constexpr, VARLEN_K: tl.constexpr, FP32: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # torch.compile (Inductor) passes Python floats as fp64 scalars, eager Triton as fp32; an fp64
    # qk_scale would promote the whole softmax to fp64 (and break the bf16 dot with an fp64 acc)
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    if VARLEN_Q:
        q_start = tl.load(CU_Q + b).to(tl.int64)
        q_len = (tl.load(CU_Q + b + 1) - tl.load(CU_Q + b)).to(tl.int32)
    else:
        q_start = 0
        q_len = N_Q
    if pid_m * BLOCK_M >= q_len:
        return
    if VARLEN_K:
        k_start = tl.load(CU_K + b).to(tl.int64)
        k_len = (tl.load(CU_K + b + 1) - tl.load(CU_K + b)).to(tl.int32)
    else:
        k_start = 0
        k_len = N_K
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < q_len

    q_base = Q + b64 * s_qb + h64 * s_qh + q_start * s_qm
    q = tl.load(q_base + offs_m[:, None] * s_qm + offs_d[None, :],
                mask=mask_m[:, None], other=0.0)                            # [BLOCK_M, D]
    k_base = K + b64 * s_kb + h64 * s_kh + k_start * s_kn
    v_base = V + b64 * s_vb + h64 * s_vh + k_start * s_vn

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (k_len // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, 0, n_full, k_len,
                               qk_scale, offs_n, offs_d, BLOCK_N, False, FP32, F32_DOT)
    if n_full < k_len:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, n_full, k_len,
                                   k_len, qk_scale, offs_n, offs_d, BLOCK_N, True, FP32, F32_DOT)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)                                 # no keys: out = 0
    out = acc / l_safe[:, None]
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453                    # -inf without keys
    o_base = O + b64 * s_ob + h64 * s_oh + q_start * s_om
    tl.store(o_base + offs_m[:, None] * s_om + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_m[:, None])
    l_base = LSE + b64 * s_lb + h64 * s_lh + q_start * s_lm
    tl.store(l_base + offs_m * s_lm, lse, mask=mask_m)


_attn_fwd_tuned = triton.autotune(configs=_fwd_configs(), key=["HEAD_DIM", "NQ_BUCKET", "NK_BUCKET"],
                                  prune_configs_by={"early_config_prune": _prune_fwd})(
    _attn_fwd_kernel)


def layout_strides(t: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(batch, head, row) element strides of a dense [B,H,N,d] or packed [total,H,d] tensor."""
    if packed:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def lse_strides(lse: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(batch, head, row) strides of lse [B,H,Nq] (dense q) or [H,total_q] (packed q)."""
    if packed:
        return 0, lse.stride(0), lse.stride(1)
    return lse.stride(0), lse.stride(1), lse.stride(2)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels need a unit head-dim stride; everything else may be strided."""
    return t if t.stride(-1) == 1 else t.contiguous()


def attn_fwd(
    q: torch.Tensor,   # [B,H,Nq,d] or [total_q,H,d]
    k: torch.Tensor,   # [B,H,Nk,d] or [total_k,H,d]
    v: torch.Tensor,   # same layout as k
    cu_q: torch.Tensor | None,  # [B+1] int32 or None
    cu_k: torch.Tensor | None,  # [B+1] int32 or None
    batch: int, max_q: int, max_k: int, scale: float,
    launch=None,
):
    """Launch the forward kernel; returns (out like q, lse float32, compiled kernel or None).

    ``launch`` wraps the kernel (``torch.library.wrap_triton`` inside the registered op).
    """
    packed_q, packed_k = cu_q is not None, cu_k is not None
    heads, d = q.shape[-2] if packed_q else q.shape[1], q.shape[-1]
    if scale < 0:  # exp2-domain max needs qk_scale >= 0; negating q is exact
        q, scale = -q, -scale
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if packed_q:
        lse = torch.empty((heads, q.shape[0]), dtype=torch.float32, device=q.device)
    else:
        lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    if out.numel() == 0 or max_q == 0 or batch == 0:
        lse.fill_(float("-inf"))
        return out.zero_(), lse, None
    n_q = 0 if packed_q else q.shape[2]
    n_k = 0 if packed_k else k.shape[2]
    dummy = cu_q if packed_q else (cu_k if packed_k else lse)

    def grid(meta):
        return (triton.cdiv(max_q, meta["BLOCK_M"]), batch * heads)

    fp32 = q.dtype == torch.float32
    if use_autotune(batch, heads, max_q, max_k) and not fp32:
        kern = _attn_fwd_tuned
    else:
        kern = fixed_kernel(_attn_fwd_kernel, FWD_FIXED_F32 if fp32 else FWD_FIXED, d)
    kern = kern if launch is None else launch(kern)
    compiled = kern[grid](
        q, k, v, out, lse, cu_q if packed_q else dummy, cu_k if packed_k else dummy,
        *layout_strides(q, packed_q), *layout_strides(k, packed_k), *layout_strides(v, packed_k),
        *layout_strides(out, packed_q), *lse_strides(lse, packed_q),
        heads, n_q, n_k, scale * LOG2E, length_bucket(max_q), length_bucket(max_k),
        HEAD_DIM=d, VARLEN_Q=packed_q, VARLEN_K=packed_k, FP32=fp32, F32_DOT=f32_dot(),
    )
    return out, lse, compiled


__all__ = ["attn_fwd", "length_bucket", "use_autotune", "fixed_config", "fixed_kernel", "layout_strides", "lse_strides", "last_dim_contiguous",
           "INTERPRET", "LOG2E", "f32_dot"]
