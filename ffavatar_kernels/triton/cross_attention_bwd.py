"""Flash cross-attention backward in Triton: dq, dk, dv (FA2 style, two main kernels).

1. ``_bwd_preprocess``: ``delta = rowsum(dO * O) - dlse`` (fp32, lse layout). The ``- dlse`` term is
   the gradient through the returned log-sum-exp: d lse_i / d s_ij = p_ij, so it folds into delta.
2. ``_attn_bwd_dkdv_kernel``: one program per (key block, batch*head, query split); it holds its K/V
   tile and loops over query blocks, in the transposed form ``sT = K Q^T`` so that no register
   transposes are needed: ``dV += P^T dO``, ``dK += dS^T Q``. With 81K queries and 5.5K keys there
   are only 43 key blocks x 16 heads = 688 long programs, so the query range is split over
   ``n_split`` programs (grid axis 2) chosen to give >= 16 programs per SM, and partial dK/dV are
   reduced with fp32 atomics (plain stores when ``n_split == 1``; the result is then deterministic,
   and under ``torch.use_deterministic_algorithms(True)`` n_split is 1, with the fixed configs).
3. ``_attn_bwd_dq_kernel``: one program per (query block, batch*head) looping over key blocks:
   ``dQ += dS K``. No atomics.

Masks are applied only on the last partial block of each loop (the loops are split). Queries
outside the range load ``lse = +inf`` so their probabilities are exactly 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cross_attention import (INTERPRET, LOG2E, f32_dot, fixed_kernel, last_dim_contiguous,
                              layout_strides, length_bucket, lse_strides, prune_by_head_dim,
                              use_autotune)

_SMS: dict = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def _configs(shapes, interp):
    if INTERPRET:
        return [triton.Config({"BLOCK_M": interp[0], "BLOCK_N": interp[1]}, num_warps=4,
                              num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in shapes]


# dK/dV: BLOCK_N is the key tile held in registers for the whole loop (128 rows: few, long programs
# that re-read Q/dO from L2 least often); BLOCK_M is the streamed query tile (32-64 keeps the
# transposed score tile sT [BLOCK_N, BLOCK_M] at <= 64 fp32 registers per thread).
# (sm_90 compile check: d=64 (64,128,8,3) and (64,64,4,3) spill nothing, (32,128,4,3) 4 registers;
# d=128: only (32,128,8,2) is spill-free, (64,128,8,3) spills 12, the others hundreds)
_DKDV = [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (32, 128, 8, 2)]
# dQ: BLOCK_M query rows held, BLOCK_N streamed keys; like the forward but with two dots per block.
_DQ = [(128, 64, 8, 3), (128, 32, 4, 3), (128, 128, 8, 2), (128, 32, 8, 2)]
# untuned small problems (d <= 64: also autotune candidates, so the compiled binaries are shared);
# d=128 takes 8 warps so the fp32 dK+dV (or dQ) tiles fit without spilling.
DKDV_FIXED = {64: (32, 128, 4, 3), 128: (32, 128, 8, 2)}
DQ_FIXED = {64: (128, 32, 4, 3), 128: (128, 32, 8, 2)}
# fp32 (tf32x3, never autotuned): small tiles against register spills of the split operands
DKDV_FIXED_F32 = {64: (32, 64, 4, 2), 128: (32, 64, 4, 2)}
DQ_FIXED_F32 = {64: (128, 32, 8, 2), 128: (64, 32, 4, 2)}


@triton.jit
def _bwd_preprocess(O, DO, DLSE, DELTA, CU_Q,
                    s_ob, s_oh, s_om, s_db, s_dh, s_dm, s_lb, s_lh, s_lm, H, N_Q,
                    HEAD_DIM: tl.constexpr, VARLEN_Q: tl.constexpr, HAS_DLSE: tl.constexpr,
                    BLOCK_M: tl.constexpr):
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
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mm = offs_m < q_len
    o = tl.load(O + b64 * s_ob + h64 * s_oh + q_start * s_om + offs_m[:, None] * s_om
                + offs_d[None, :], mask=mm[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b64 * s_db + h64 * s_dh + q_start * s_dm + offs_m[:, None] * s_dm
                 + offs_d[None, :], mask=mm[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    l_off = b64 * s_lb + h64 * s_lh + q_start * s_lm + offs_m * s_lm
    if HAS_DLSE:
        delta -= tl.load(DLSE + l_off, mask=mm, other=0.0)
    tl.store(DELTA + l_off, delta, mask=mm)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, dl_base, s_qm, s_dm, s_lm, lo, hi, q_len,
                qk_scale, offs_m0, offs_d, BLOCK_M: tl.constexpr, MASK_M: tl.constexpr,
                FP32: tl.constexpr, F32_DOT: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q_ptrs = q_base + offs_m[:, None] * s_qm + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * s_dm + offs_d[None, :]
        if MASK_M:
            mm = offs_m < q_len
            q = tl.load(q_ptrs, mask=mm[:, None], other=0.0)                # [BLOCK_M, D]
            do = tl.load(do_ptrs, mask=mm[:, None], other=0.0)              # [BLOCK_M, D]
            lse = tl.load(l_base + offs_m * s_lm, mask=mm, other=float("inf"))
            delta = tl.load(dl_base + offs_m * s_lm, mask=mm, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(l_base + offs_m * s_lm)
            delta = tl.load(dl_base + offs_m * s_lm)
        if FP32:
            sT = tl.dot(k, tl.trans(q), input_precision=F32_DOT)            # [BLOCK_N, BLOCK_M]
        else:
            sT = tl.dot(k, tl.trans(q))
        pT = tl.math.exp2(sT * qk_scale - (lse * 1.4426950408889634)[None, :])
        if FP32:
            dv = tl.dot(pT, do, dv, input_precision=F32_DOT)
            dpT = tl.dot(v, tl.trans(do), input_precision=F32_DOT)
        else:
            dv = tl.dot(pT.to(do.dtype), do, dv)
            dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        if FP32:
            dk = tl.dot(dsT, q, dk, input_precision=F32_DOT)
        else:
            dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dm, s_lb, s_lh, s_lm,
    s_gb, s_gh, s_gn,
    H, N_Q, N_K, qk_scale, sm_scale, NQ_BUCKET, NK_BUCKET,
    HEAD_DIM: tl.constexpr, VARLEN_Q: tl.constexpr, VARLEN_K: tl.constexpr, FP32: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # fp32 scales whatever the launcher passed (Inductor: fp64 scalars; see the forward kernel)
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_split = tl.num_programs(2)
    b = pid_bh // H
    h = pid_bh % H
    if VARLEN_K:
        k_start = tl.load(CU_K + b).to(tl.int64)
        k_len = (tl.load(CU_K + b + 1) - tl.load(CU_K + b)).to(tl.int32)
    else:
        k_start = 0
        k_len = N_K
    if pid_n * BLOCK_N >= k_len:
        return
    if VARLEN_Q:
        q_start = tl.load(CU_Q + b).to(tl.int64)
        q_len = (tl.load(CU_Q + b + 1) - tl.load(CU_Q + b)).to(tl.int32)
    else:
        q_start = 0
        q_len = N_Q
    n_qblk = tl.cdiv(q_len, BLOCK_M)
    per = tl.cdiv(n_qblk, n_split)
    lo = pid_s * per
    hi = tl.minimum(lo + per, n_qblk)
    if lo >= hi:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mn = offs_n < k_len
    k = tl.load(K + b64 * s_kb + h64 * s_kh + k_start * s_kn + offs_n[:, None] * s_kn
                + offs_d[None, :], mask=mn[:, None], other=0.0)              # [BLOCK_N, D]
    v = tl.load(V + b64 * s_vb + h64 * s_vh + k_start * s_vn + offs_n[:, None] * s_vn
                + offs_d[None, :], mask=mn[:, None], other=0.0)              # [BLOCK_N, D]
    q_base = Q + b64 * s_qb + h64 * s_qh + q_start * s_qm
    do_base = DO + b64 * s_db + h64 * s_dh + q_start * s_dm
    l_base = LSE + b64 * s_lb + h64 * s_lh + q_start * s_lm
    dl_base = DELTA + b64 * s_lb + h64 * s_lh + q_start * s_lm

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    full = q_len // BLOCK_M
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, dl_base, s_qm, s_dm, s_lm,
                         lo * BLOCK_M, tl.minimum(hi, full) * BLOCK_M, q_len, qk_scale, offs_m0,
                         offs_d, BLOCK_M, False, FP32, F32_DOT)
    if (full >= lo) & (full < hi):  # the partial query block belongs to this split
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, l_base, dl_base, s_qm, s_dm, s_lm,
                             full * BLOCK_M, q_len, q_len, qk_scale, offs_m0, offs_d, BLOCK_M,
                             True, FP32, F32_DOT)
    dk = dk * sm_scale
    g_off = b64 * s_gb + h64 * s_gh + k_start * s_gn + offs_n[:, None] * s_gn + offs_d[None, :]
    if n_split > 1:
        tl.atomic_add(DK + g_off, dk, mask=mn[:, None], sem="relaxed")
        tl.atomic_add(DV + g_off, dv, mask=mn[:, None], sem="relaxed")
    else:
        tl.store(DK + g_off, dk, mask=mn[:, None])
        tl.store(DV + g_off, dv, mask=mn[:, None])


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, k_base, v_base, s_kn, s_vn, lo, hi, k_len, qk_scale,
              offs_n0, offs_d, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, FP32: tl.constexpr,
              F32_DOT: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n0
        k_ptrs = k_base + cols[:, None] * s_kn + offs_d[None, :]
        v_ptrs = v_base + cols[:, None] * s_vn + offs_d[None, :]
        if MASK_N:
            k = tl.load(k_ptrs, mask=cols[:, None] < k_len, other=0.0)      # [BLOCK_N, D]
            v = tl.load(v_ptrs, mask=cols[:, None] < k_len, other=0.0)      # [BLOCK_N, D]
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if FP32:
            s = tl.dot(q, tl.trans(k), input_precision=F32_DOT)               # [BLOCK_M, BLOCK_N]
            dp = tl.dot(do, tl.trans(v), input_precision=F32_DOT)
        else:
            s = tl.dot(q, tl.trans(k))
            dp = tl.dot(do, tl.trans(v))
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
        if MASK_N:
            p = tl.where(cols[None, :] < k_len, p, 0.0)
        ds = p * (dp - delta[:, None])
        if FP32:
            dq = tl.dot(ds, k, dq, input_precision=F32_DOT)
        else:
            dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dm, s_lb, s_lh, s_lm,
    s_gb, s_gh, s_gm,
    H, N_Q, N_K, qk_scale, sm_scale, NQ_BUCKET, NK_BUCKET,
    HEAD_DIM: tl.constexpr, VARLEN_Q: tl.constexpr, VARLEN_K: tl.constexpr, FP32: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # fp32 scales whatever the launcher passed (Inductor: fp64 scalars; see the forward kernel)
    qk_scale = tl.cast(qk_scale, tl.float32)
    sm_scale = tl.cast(sm_scale, tl.float32)
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
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mm = offs_m < q_len
    q = tl.load(Q + b64 * s_qb + h64 * s_qh + q_start * s_qm + offs_m[:, None] * s_qm
                + offs_d[None, :], mask=mm[:, None], other=0.0)              # [BLOCK_M, D]
    do = tl.load(DO + b64 * s_db + h64 * s_dh + q_start * s_dm + offs_m[:, None] * s_dm
                 + offs_d[None, :], mask=mm[:, None], other=0.0)             # [BLOCK_M, D]
    l_off = b64 * s_lb + h64 * s_lh + q_start * s_lm + offs_m * s_lm
    lse2 = tl.load(LSE + l_off, mask=mm, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + l_off, mask=mm, other=0.0)
    k_base = K + b64 * s_kb + h64 * s_kh + k_start * s_kn
    v_base = V + b64 * s_vb + h64 * s_vh + k_start * s_vn

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (k_len // BLOCK_N) * BLOCK_N
    dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, s_kn, s_vn, 0, n_full, k_len, qk_scale,
                   offs_n0, offs_d, BLOCK_N, False, FP32, F32_DOT)
    if n_full < k_len:
        dq = _dq_inner(dq, q, do, lse2, delta, k_base, v_base, s_kn, s_vn, n_full, k_len, k_len,
                       qk_scale, offs_n0, offs_d, BLOCK_N, True, FP32, F32_DOT)
    dq = dq * sm_scale
    tl.store(DQ + b64 * s_gb + h64 * s_gh + q_start * s_gm + offs_m[:, None] * s_gm
             + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=mm[:, None])


_attn_bwd_dkdv_tuned = triton.autotune(
    configs=_configs(_DKDV, (32, 32)), key=["HEAD_DIM", "NQ_BUCKET", "NK_BUCKET"],
    reset_to_zero=["DK", "DV"],
    prune_configs_by={"early_config_prune": prune_by_head_dim({(64, 128, 8, 3), (32, 128, 8, 2)})},
)(_attn_bwd_dkdv_kernel)
_attn_bwd_dq_tuned = triton.autotune(
    configs=_configs(_DQ, (32, 32)), key=["HEAD_DIM", "NQ_BUCKET", "NK_BUCKET"],
    prune_configs_by={"early_config_prune": prune_by_head_dim({(128, 64, 8, 3), (128, 32, 8, 2),
                                                               (128, 128, 8, 2)})},
)(_attn_bwd_dq_kernel)


def attn_bwd(
    do: torch.Tensor,    # like q: [B,H,Nq,d] or [total_q,H,d]
    q: torch.Tensor,     # [B,H,Nq,d] or [total_q,H,d]
    k: torch.Tensor,     # [B,H,Nk,d] or [total_k,H,d]
    v: torch.Tensor,     # same layout as k
    out: torch.Tensor,   # like q (forward output)
    lse: torch.Tensor,   # float32 [B,H,Nq] or [H,total_q] (forward log-sum-exp, natural log)
    dlse: torch.Tensor | None,  # like lse, or None
    cu_q: torch.Tensor | None, cu_k: torch.Tensor | None,  # [B+1] int32 or None
    batch: int, max_q: int, max_k: int, scale: float,
    launch=None,
):
    """Launch the backward kernels; returns (dq like q, dk like k, dv like v)."""
    packed_q, packed_k = cu_q is not None, cu_k is not None
    heads, d = q.shape[-2] if packed_q else q.shape[1], q.shape[-1]
    neg = scale < 0
    if neg:
        q, scale = -q, -scale
    q, k, v = last_dim_contiguous(q), last_dim_contiguous(k), last_dim_contiguous(v)
    do, out = last_dim_contiguous(do), last_dim_contiguous(out)
    lse = lse.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk32 = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv32 = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    if q.numel() == 0 or k.numel() == 0 or batch == 0 or max_q == 0 or max_k == 0:
        return dq.zero_(), dk32.to(k.dtype), dv32.to(v.dtype)
    wrap = (lambda f: f) if launch is None else launch
    delta = torch.empty_like(lse)
    dummy = cu_q if packed_q else (cu_k if packed_k else lse)
    cq = cu_q if packed_q else dummy
    ck = cu_k if packed_k else dummy
    n_q = 0 if packed_q else q.shape[2]
    n_k = 0 if packed_k else k.shape[2]
    ls = lse_strides(lse, packed_q)
    fp32 = q.dtype == torch.float32
    pre_m = 64
    wrap(_bwd_preprocess)[(triton.cdiv(max_q, pre_m), batch * heads)](
        out, do, dlse.contiguous() if dlse is not None else lse, delta, cq,
        *layout_strides(out, packed_q), *layout_strides(do, packed_q), *ls, heads, n_q,
        HEAD_DIM=d, VARLEN_Q=packed_q, HAS_DLSE=dlse is not None, BLOCK_M=pre_m)

    n_sms = _num_sms(q.device)
    min_blocks = 1 if INTERPRET else 4
    # torch.use_deterministic_algorithms(True): dK / dV without atomics (use_autotune: fixed configs)
    deterministic = torch.are_deterministic_algorithms_enabled()

    def grid_kv(meta):
        n_kblk = triton.cdiv(max_k, meta["BLOCK_N"])
        n_qblk = triton.cdiv(max_q, meta["BLOCK_M"])
        progs = n_kblk * batch * heads
        split = max(1, min(triton.cdiv(16 * n_sms, progs), n_qblk // min_blocks))
        if deterministic:  # one program per key block: plain stores, no atomic order
            split = 1
        return (n_kblk, batch * heads, split)

    common = (*layout_strides(q, packed_q), *layout_strides(k, packed_k),
              *layout_strides(v, packed_k), *layout_strides(do, packed_q), *ls)
    meta = dict(HEAD_DIM=d, VARLEN_Q=packed_q, VARLEN_K=packed_k, FP32=fp32, F32_DOT=f32_dot())
    tail = (heads, n_q, n_k, scale * LOG2E, scale, length_bucket(max_q), length_bucket(max_k))
    if use_autotune(batch, heads, max_q, max_k) and not fp32:
        kv_kern, q_kern = _attn_bwd_dkdv_tuned, _attn_bwd_dq_tuned
    else:
        kv_kern = fixed_kernel(_attn_bwd_dkdv_kernel, DKDV_FIXED_F32 if fp32 else DKDV_FIXED, d)
        q_kern = fixed_kernel(_attn_bwd_dq_kernel, DQ_FIXED_F32 if fp32 else DQ_FIXED, d)
    wrap(kv_kern)[grid_kv](
        q, k, v, do, lse, delta, dk32, dv32, cq, ck, *common, *layout_strides(dk32, packed_k),
        *tail, **meta)

    def grid_q(meta):
        return (triton.cdiv(max_q, meta["BLOCK_M"]), batch * heads)

    wrap(q_kern)[grid_q](
        q, k, v, do, lse, delta, dq, cq, ck, *common, *layout_strides(dq, packed_q), *tail, **meta)
    if neg:
        dq = -dq
    return dq, dk32.to(k.dtype), dv32.to(v.dtype)
