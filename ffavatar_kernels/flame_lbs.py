"""Fused FLAME / SMPL linear blend skinning (smplx ``lbs`` contract) and anchored-Gaussian skinning.

Public API: :func:`flame_lbs`, :func:`skin_gaussians`, :func:`shape_template`. Both ops are
compositions of registered torch ops (``torch.ops.ffavatar.*``, CPU and CUDA kernels) with autograd:

1. ``flame_lbs_joints``: rest joints ``J_template + J_dirs . betas`` where ``J_template =
   J_regressor @ v_template`` [J,3] and ``J_dirs = J_regressor @ shapedirs`` [J,3,S] (computed once
   per model and cached, so joints need no pass over the V vertices), Rodrigues, kinematic chain.
2. ``flame_lbs``: one pass over the vertices for all frames: shape/expression blend (shapedirs read
   once for all B frames), pose correctives, skinning.
3. ``skin_gaussians``: per Gaussian, fused with the gather of its <= 4 anchor vertices.

Expression-only fast path: when the shape is fixed per avatar, precompute
``v_shaped = shape_template(v_template, shapedirs, betas_shape)`` once and call with
``v_template=v_shaped``, ``shapedirs=shapedirs[..., 300:]`` (the 100 expression directions; make that slice
contiguous once and reuse the tensor, so the cached joint products hit) and ``betas=expression``: the kernels then read 4x less.

Conventions (shared with ``ffavatar_kernels.reference.flame_lbs``): quaternions wxyz; the rotation of a
blended transform is Shepperd's method on its 3x3 part, normalized, w >= 0; posed quats are
``q(T_u) ⊗ normalize(quats)``. ``transforms`` are the relative joint transforms A_j (the ones that
skin rest-pose points), as smplx's ``batch_rigid_transform`` returns.

Host time of an eager call (issue 15, "eager overhead"): a call whose model tensors, parents and
anchors were checked before (same objects, same versions) takes the fast path of
``_flame_lbs_fast.py`` (a cheap all-good test of betas / pose / offsets / quats, the cached joint
products and joint weights); the others run the detailed checks. The ops run below the Autograd key
when no gradient is needed, else as one autograd node per call (``_flame_lbs_autograd.py``).

Deterministic mode: under ``torch.use_deterministic_algorithms(True)`` a CUDA call that needs a
gradient runs as PyTorch operations (``_lbs_deterministic.py``) instead of the kernels, whose
backward adds with float atomics; its gradients are then bit-for-bit repeatable. Calls without a
gradient (animation) and CPU calls run the kernels as always (both deterministic).

Input checks cost no host sync, except ``parents`` given as a CUDA tensor: it is read (and
validated) once per tensor object and cached. Indices in ``anchor_idx`` are range-checked on the
CPU only (on CUDA the check would cost a host sync per call).
"""
from __future__ import annotations

import weakref

import torch

from . import _env, _ext
from . import _flame_lbs_autograd as _ag
from . import _flame_lbs_fast as _fast
from . import _lbs_deterministic as _det
from ._api import public_op
from ._validate import check_tensor

__all__ = ["flame_lbs", "skin_gaussians", "shape_template"]

_ops = torch.ops.ffavatar
_LIB = "ffavatar"


# ---- fake (meta) kernels -------------------------------------------------------------------------
def _joints_fake(betas, pose, J_template, J_dirs, parents):
    B, J = betas.shape[0], J_template.shape[0]
    return (betas.new_empty(B, J, 3, 3), betas.new_empty(B, J, 3), betas.new_empty(B, J, 4, 4))


def _joints_bwd_fake(g_rot, g_joints, g_A, betas, pose, J_template, J_dirs, parents):
    B, J = betas.shape[0], J_template.shape[0]
    return (torch.empty_like(betas), torch.empty_like(pose), betas.new_empty(B, J, 3))


def _verts_fake(betas, rot, A, v_template, shapedirs, posedirs, lbs_weights, pdl=False):
    B, V = betas.shape[0], v_template.shape[0]
    return betas.new_empty(B, V, 3), betas.new_empty(B, V, 4)  # v_posed padded (x, y, z, 0)


def _verts_bwd_fake(g_verts, g_vposed, betas, rot, A, shapedirs, posedirs, lbs_weights, v_posed,
                    need_vt, need_sd, need_pd, need_W):
    V = lbs_weights.shape[0]
    e = betas.new_empty(0)
    return (torch.empty_like(betas), torch.empty_like(rot), torch.empty_like(A),
            betas.new_empty(V, 3) if need_vt else e,
            torch.empty_like(shapedirs) if need_sd else e,
            torch.empty_like(posedirs) if need_pd else e,
            torch.empty_like(lbs_weights) if need_W else e)


def _gauss_fake(v_posed, A, W, idx, aw, offsets, quats, means_only, pdl=False, joint_weights=None):
    B, N = v_posed.shape[0], idx.shape[0]
    return v_posed.new_empty(B, N, 3), v_posed.new_empty(B, N, 4)


def _gauss_bwd_fake(g_means, g_quats, v_posed, A, W, idx, aw, offsets, quats, means_only, need_W,
                    need_aw, joint_weights=None):
    e = v_posed.new_empty(0)
    return (torch.empty_like(v_posed), torch.empty_like(A),
            torch.empty_like(W) if need_W else e, torch.empty_like(aw) if need_aw else e,
            torch.empty_like(offsets) if offsets is not None else e,
            torch.empty_like(quats) if quats is not None else e)


def _fused_fake(betas, pose, J_template, J_dirs, parents, v_template, shapedirs, posedirs, lbs_weights,
                anchor_idx, anchor_weights, joint_weights, offsets, quats, means_only):
    N = anchor_idx.shape[0]
    return betas.new_empty(1, N, 3), betas.new_empty(1, N, 4)


def _fused_cpu(betas, pose, J_template, J_dirs, parents, v_template, shapedirs, posedirs, lbs_weights,
               anchor_idx, anchor_weights, joint_weights, offsets, quats, means_only):
    """CPU kernel of flame_skin_gaussians: the three ops it fuses on CUDA, with the same checks."""
    if betas.dim() != 2 or betas.shape[0] != 1:
        raise RuntimeError(f"flame_skin_gaussians: one frame (betas [1,S]), got {list(betas.shape)}")
    if J_template.shape[0] > _FUSED_MAX_JOINTS:
        raise RuntimeError(f"flame_skin_gaussians: at most {_FUSED_MAX_JOINTS} joints, got J={J_template.shape[0]}")
    rot, _, A = _ops.flame_lbs_joints(betas, pose, J_template, J_dirs, parents)
    _, v_posed = _ops.flame_lbs(betas, rot, A, v_template, shapedirs, posedirs, lbs_weights)
    return _ops.skin_gaussians(v_posed, A, lbs_weights, anchor_idx, anchor_weights, offsets, quats, means_only,
                               False, joint_weights)


_REGISTERED = False


def register() -> None:
    """Attach fake kernels, the fused op's CPU kernel and autograd once (the op anatomy's
    ``register()``, called by the package's ``__init__``; no-op without the compiled library)."""
    global _REGISTERED
    if _REGISTERED or not _ext.load():
        return
    _REGISTERED = True
    for name, fn in (("flame_lbs_joints", _joints_fake), ("flame_lbs_joints_bwd", _joints_bwd_fake),
                     ("flame_lbs", _verts_fake), ("flame_lbs_bwd", _verts_bwd_fake),
                     ("skin_gaussians", _gauss_fake), ("skin_gaussians_bwd", _gauss_bwd_fake),
                     ("flame_skin_gaussians", _fused_fake)):
        torch.library.register_fake(f"{_LIB}::{name}", fn)
    torch.library.register_kernel(f"{_LIB}::flame_skin_gaussians", "cpu", _fused_cpu)
    for name, bwd, setup in (("flame_lbs_joints", _ag.joints_backward, _ag.joints_setup),
                             ("flame_lbs", _ag.verts_backward, _ag.verts_setup),
                             ("skin_gaussians", _ag.gauss_backward, _ag.gauss_setup)):
        torch.library.register_autograd(f"{_LIB}::{name}", bwd, setup_context=setup)


# ---- caches (model constants) --------------------------------------------------------------------
class _Cache:
    """Results keyed on tensor identity + version (weak references: no stale hits)."""

    def __init__(self, size: int = 8):
        self.size, self.entries = size, []

    def get(self, key_tensors, make):
        for refs, versions, value in self.entries:
            if all(r() is t for r, t in zip(refs, key_tensors)) and \
                    versions == tuple(t._version for t in key_tensors):
                return value
        value = make()
        refs = tuple(weakref.ref(t) for t in key_tensors)
        self.entries = [e for e in self.entries if all(r() is not None for r in e[0])]
        self.entries.insert(0, (refs, tuple(t._version for t in key_tensors), value))
        del self.entries[self.size:]
        return value


_parents_cache = _Cache()
# J products and anchor joint weights: one cache per inference mode (inference tensors cannot be
# saved for a later backward, so entries made under torch.inference_mode() serve that mode only)
_joint_caches = {False: _Cache(), True: _Cache()}
_wg_caches = {False: _Cache(), True: _Cache()}


def _joint_products(J_regressor, v_template, shapedirs):
    """J_template [J,3] = J_regressor @ v_template, J_dirs [J,3,S] = J_regressor @ shapedirs."""
    def make():
        J, V = J_regressor.shape
        S = shapedirs.shape[2]
        return (J_regressor @ v_template,
                (J_regressor @ shapedirs.reshape(V, 3 * S)).reshape(J, 3, S).contiguous())
    grads = torch.is_grad_enabled() and any(
        t.requires_grad for t in (J_regressor, v_template, shapedirs))
    if grads or torch.compiler.is_compiling():
        return make()
    # Inference tensors made under torch.inference_mode() cannot be saved for a later backward, so
    # that mode has its own cache.
    return _joint_caches[torch.is_inference_mode_enabled()].get((J_regressor, v_template, shapedirs), make)


def _anchor_joint_weights(W, idx, aw):
    """joint_weights [N,J] = sum_k aw[:,k,None] * W[idx[:,k]] (frame- and pose-independent), cached
    per (lbs_weights, anchor_idx, anchor_weights). None (the kernels then gather lbs_weights
    themselves) under torch.compile and when lbs_weights or anchor_weights require grad: tensors
    being trained change every step, and a change through ``.data`` (gradcheck, some optimizers)
    does not bump the version counter the cache keys on. A plain value input of skin_gaussians: the
    kernels compute the gradients of lbs_weights and anchor_weights from those tensors."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (W.requires_grad or aw.requires_grad)):
        return None

    def make():
        V = W.shape[0]
        if idx.device.type == "cpu" and idx.numel():  # as the op's own check (CUDA: a device assert)
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= V:
                raise ValueError(f"anchor_idx: expected indices in [0, {V}) (V from v_template), got values "
                                 f"in [{lo}, {hi}]")
        with torch.no_grad():
            ii = idx.long()
            wg = aw[:, 0, None] * W[ii[:, 0]]
            for k in range(1, idx.shape[1]):  # anchor_joint_weights' order (lbs_math.h)
                wg = wg + aw[:, k, None] * W[ii[:, k]]
            return wg.contiguous()
    return _wg_caches[torch.is_inference_mode_enabled()].get((W, idx, aw), make)


def _check_parents_list(parents: list, J: int) -> list:
    if len(parents) != J:
        raise ValueError(f"parents: expected shape [{J}] (J from J_regressor), got [{len(parents)}]")
    for j, p in enumerate(parents):
        ok = p == -1 if j == 0 else 0 <= p < j
        if not ok:
            raise ValueError(
                "parents: expected a kinematic tree in topological order (parents[0] == -1, "
                f"0 <= parents[j] < j), got parents[{j}] = {p} in {parents}")
    return parents


def _parents(parents, J: int) -> list:
    if isinstance(parents, (list, tuple)):
        return _check_parents_list([int(p) for p in parents], J)
    check_tensor("parents", parents, (None,), (torch.int64, torch.int32))
    if torch.compiler.is_compiling():
        return _check_parents_list([int(p) for p in parents.tolist()], J)
    return _parents_cache.get((parents,), lambda: _check_parents_list(parents.tolist(), J))


# ---- validation ----------------------------------------------------------------------------------
def _float_dtypes(device: torch.device):
    return (torch.float32, torch.float64) if device.type == "cpu" else (torch.float32,)


def _check_model_tensors(v_template, shapedirs, posedirs, J_regressor, lbs_weights):
    """Validate the model constants (cached per tensor identity): returns (J, V, S)."""
    if not isinstance(J_regressor, torch.Tensor):
        raise TypeError(f"J_regressor: expected a torch.Tensor, got {type(J_regressor).__name__}")
    dev = J_regressor.device
    sz: dict = {}
    check_tensor("J_regressor", J_regressor, ("J", "V"), _float_dtypes(dev), dev, sz)
    dt = J_regressor.dtype
    J, V = sz["J"], sz["V"]
    if J < 1 or J > 64:
        raise ValueError(f"J_regressor: expected 1..64 joints, got J={J}")
    check_tensor("v_template", v_template, ("V", 3), dt, dev, sz)
    check_tensor("shapedirs", shapedirs, ("V", 3, "S"), dt, dev, sz)
    check_tensor("posedirs", posedirs, ((J - 1) * 9, V * 3), dt, dev, sz)
    check_tensor("lbs_weights", lbs_weights, ("V", "J"), dt, dev, sz)
    return J, V, sz["S"]


_model_cache = _Cache()


def _check_model(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights):
    model = (v_template, shapedirs, posedirs, J_regressor, lbs_weights)
    if torch.compiler.is_compiling() or not all(isinstance(t, torch.Tensor) for t in model):
        J, V, S = _check_model_tensors(*model)
    else:
        J, V, S = _model_cache.get(model, lambda: _check_model_tensors(*model))
    dev, dt = J_regressor.device, J_regressor.dtype
    check_tensor("betas", betas, (None, S), dt, dev)
    B = betas.shape[0]
    if not isinstance(pose, torch.Tensor):
        raise TypeError(f"pose: expected a torch.Tensor, got {type(pose).__name__}")
    if pose.dim() == 4:
        pose_k = check_tensor("pose", pose, (B, J, 3, 3), dt, dev)
    elif pose.dim() == 3:
        pose_k = check_tensor("pose", pose, (B, J, 3), dt, dev)
    else:
        pose_k = check_tensor("pose", pose, (B, J * 3), dt, dev).reshape(B, J, 3)
    if isinstance(parents, torch.Tensor) and parents.device != dev and parents.device.type != "cpu":
        raise ValueError(f"parents: expected a tensor on {dev} or the CPU, got one on {parents.device}")
    par = _parents(parents, J)
    return pose_k.contiguous(), par


def _dense_model(betas, v_template, shapedirs, posedirs, J_regressor, lbs_weights):
    """Contiguous betas and model tensors, plus the (cached) joint products J_template, J_dirs."""
    betas, v_template, shapedirs, posedirs, lbs_weights = (
        t.contiguous() for t in (betas, v_template, shapedirs, posedirs, lbs_weights))
    J_template, J_dirs = _joint_products(J_regressor.contiguous(), v_template, shapedirs)
    return betas, v_template, shapedirs, posedirs, lbs_weights, J_template, J_dirs


def _lbs_args(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights):
    """The detailed checks (errors naming the argument), then the LBS ops' arguments (betas, pose
    [B,J,3] or [B,J,3,3], J_template, J_dirs, parents list, v_template, shapedirs, posedirs,
    lbs_weights), every tensor contiguous. Every input is made contiguous here, before the first
    launch, so the kernels run back to back and the vertex kernel may start under programmatic
    dependent launch (its inputs other than rot / A exist before the joints kernel starts)."""
    pose_k, par = _check_model(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents,
                               lbs_weights)
    _ext.require("flame_lbs")
    betas, vt, sd, pd, W, Jt, Jd = _dense_model(betas, v_template, shapedirs, posedirs, J_regressor, lbs_weights)
    return (betas, pose_k, Jt, Jd, par, vt, sd, pd, W)


def _skin_args(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights, anchor_idx,
               anchor_weights, offsets, quats, means_only):
    """As _lbs_args, for skin_gaussians: its 15 arguments (SkinFn's order), every tensor contiguous."""
    pose_k, par = _check_model(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents,
                               lbs_weights)
    dev, dt = betas.device, betas.dtype
    sz = {"B": betas.shape[0]}
    check_tensor("anchor_idx", anchor_idx, ("N", "K"), (torch.int32, torch.int64), dev, sz)
    if not 1 <= sz["K"] <= 4:
        raise ValueError(f"anchor_idx: expected 1..4 anchors per Gaussian, got shape {list(anchor_idx.shape)}")
    check_tensor("anchor_weights", anchor_weights, ("N", "K"), dt, dev, sz)
    if offsets is not None:
        if isinstance(offsets, torch.Tensor) and offsets.dim() == 3:
            check_tensor("offsets", offsets, ("B", "N", 3), dt, dev, sz)
        else:
            check_tensor("offsets", offsets, ("N", 3), dt, dev, sz)
        offsets = offsets.contiguous()
    if quats is not None:
        check_tensor("quats", quats, ("N", 4), dt, dev, sz)
        quats = quats.contiguous()
    _ext.require("skin_gaussians")
    anchor_idx, anchor_weights = anchor_idx.contiguous(), anchor_weights.contiguous()
    # before the first launch: the Gaussian kernel reads it before its PDL wait (see _lbs_args)
    wg = _anchor_joint_weights(lbs_weights, anchor_idx, anchor_weights)
    betas, vt, sd, pd, W, Jt, Jd = _dense_model(betas, v_template, shapedirs, posedirs, J_regressor, lbs_weights)
    return (betas, pose_k, Jt, Jd, par, vt, sd, pd, W, anchor_idx, anchor_weights, offsets, quats,
            bool(means_only), wg)


# ---- running the ops ------------------------------------------------------------------------------
_FUSED_MAX_JOINTS = 8  # kFusedMaxJoints (flame_lbs.h)


def _needs_grad(args, idxs) -> bool:
    """Whether autograd must record: grad mode on and a differentiable argument requires grad."""
    return torch.is_grad_enabled() and any(args[i] is not None and args[i].requires_grad for i in idxs)


def _lbs_ops(betas, pose, Jt, Jd, par, vt, sd, pd, W):
    rot, joints, A = _ops.flame_lbs_joints(betas, pose, Jt, Jd, par)
    return _ops.flame_lbs(betas, rot, A, vt, sd, pd, W, betas.is_cuda)[0], joints, A


def _skin_ops(betas, pose, Jt, Jd, par, vt, sd, pd, W, idx, aw, off, q, means_only, wg):
    rot, _, A = _ops.flame_lbs_joints(betas, pose, Jt, Jd, par)
    _, v_posed = _ops.flame_lbs(betas, rot, A, vt, sd, pd, W, betas.is_cuda)
    return _ops.skin_gaussians(v_posed, A, W, idx, aw, off, q, means_only, v_posed.is_cuda, wg)


def _run_lbs(args):
    """(verts, joints, A): one autograd node (LbsFn) when a gradient is needed, else the two ops
    below the Autograd key (their registered Python autograd would only cost host time); under
    torch.compile the ops with their registered autograd."""
    if torch.compiler.is_compiling():
        return _lbs_ops(*args)
    if _needs_grad(args, _ag.LBS_GRAD_INPUTS):
        if _det.active(args[0]):  # torch.use_deterministic_algorithms(True): no float atomics
            return _det.lbs(*args)
        return _ag.LbsFn.apply(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return _lbs_ops(*args)


def _run_skin(args):
    """(means, quats): SkinFn when a gradient is needed; else, for one frame on CUDA (J <= 8,
    FFAVATAR_NO_FUSED unset), the fused flame_skin_gaussians op (two launches instead of three), or
    the three ops below the Autograd key; under torch.compile the ops with their registered autograd."""
    if torch.compiler.is_compiling():
        return _skin_ops(*args)
    if _needs_grad(args, _ag.SKIN_GRAD_INPUTS):
        if _det.active(args[0]):  # torch.use_deterministic_algorithms(True): no float atomics
            return _det.skin(*args)
        return _ag.SkinFn.apply(*args)
    betas, pose, Jt, Jd, par, vt, sd, pd, W, idx, aw, off, q, means_only, wg = args
    with torch._C._AutoDispatchBelowAutograd():
        if betas.shape[0] == 1 and betas.is_cuda and len(par) <= _FUSED_MAX_JOINTS and not _env.no_fused():
            return _ops.flame_skin_gaussians(betas, pose, Jt, Jd, par, vt, sd, pd, W, idx, aw, wg, off, q,
                                             means_only)
        return _skin_ops(*args)


@public_op("flame_lbs")
def flame_lbs(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights, *,
              return_transforms=False):
    """FLAME / SMPL linear blend skinning with the smplx ``lbs`` contract, fused kernels.

    Args:
        betas: [B,S] shape + expression coefficients, concatenated (float32; float64 on CPU).
        pose: [B,J*3] axis-angle (also [B,J,3]), or [B,J,3,3] rotation matrices.
        v_template: [V,3] template vertices.
        shapedirs: [V,3,S] blendshape directions.
        posedirs: [(J-1)*9, V*3] pose-corrective directions (smplx layout).
        J_regressor: [J,V] dense joint regressor.
        parents: [J] int tensor (or list): parents[0] == -1, parents[j] < j.
        lbs_weights: [V,J] skinning weights.
        return_transforms: also return the relative joint transforms.

    Returns:
        vertices [B,V,3], joints [B,J,3] (posed), and transforms [B,J,4,4] if requested.
        Differentiable w.r.t. betas, pose, v_template, shapedirs, posedirs, J_regressor and
        lbs_weights.
    """
    consts = (v_template, shapedirs, posedirs, J_regressor, lbs_weights)
    c = _fast.lookup(consts, parents)
    ins = None if c is None else _fast.cheap_inputs(c, betas, pose)
    if ins is not None:
        args = (ins[0], ins[1], c.Jt, c.Jd, c.par, v_template, shapedirs, posedirs, lbs_weights)
    else:
        args = _lbs_args(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights)
        _fast.remember(consts, parents, args)
    verts, joints, A = _run_lbs(args)
    return (verts, joints, A) if return_transforms else (verts, joints)


@public_op("skin_gaussians")
def skin_gaussians(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights,
                   anchor_idx, anchor_weights, offsets=None, quats=None, *, means_only=False):
    """Skin Gaussians anchored to the (subdivided) FLAME surface, exactly as the dense upsampled mesh.

    Gaussian g with anchors (i_k, w_k): rest point ``p = sum_k w_k v_posed[i_k] + offset``, weights
    ``W_u = sum_k w_k lbs_weights[i_k]``, transform ``T_u = sum_j W_uj A_j``; posed mean
    ``T_u[:3,:3] p + T_u[:3,3]``, posed rotation ``q(T_u[:3,:3]) ⊗ normalize(quats)`` (Shepperd,
    normalized, w >= 0). No per-Gaussian blendshape tensor is ever built.

    Args:
        betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights: as
            :func:`flame_lbs`.
        anchor_idx: [N,K] int32 or int64 base-vertex indices, 1 <= K <= 4, each in [0, V) (checked
            on the CPU; on CUDA not checked, since that would cost a host sync per call).
        anchor_weights: [N,K] float weights (rows sum to 1 for subdivision anchors).
        offsets: [N,3] or [B,N,3] canonical-space offsets, or None.
        quats: [N,4] canonical rotations (wxyz, any norm), or None (identity).
        means_only: skip the rotation; quats are the canonical ones (normalized) broadcast.

    Returns:
        means [B,N,3], quats [B,N,4]. Differentiable w.r.t. offsets, quats, anchor_weights and
        everything :func:`flame_lbs` is.
    """
    consts = (v_template, shapedirs, posedirs, J_regressor, lbs_weights, anchor_idx, anchor_weights)
    c = _fast.lookup(consts, parents)
    ins = None if c is None else _fast.cheap_inputs(c, betas, pose, offsets, quats)
    if ins is not None:
        b, p, off, q = ins
        args = (b, p, c.Jt, c.Jd, c.par, v_template, shapedirs, posedirs, lbs_weights, anchor_idx, anchor_weights,
                off, q, bool(means_only), c.wg)
    else:
        args = _skin_args(betas, pose, v_template, shapedirs, posedirs, J_regressor, parents, lbs_weights,
                          anchor_idx, anchor_weights, offsets, quats, means_only)
        _fast.remember(consts, parents, args)
    return _run_skin(args)


def shape_template(v_template, shapedirs, betas_shape):
    """Shaped template for the expression-only fast path.

    Args:
        v_template: [V,3]; shapedirs: [V,3,S] (full, shape directions first);
        betas_shape: [S'] or [1,S'] shape coefficients (S' <= S, typically 300).

    Returns:
        [V,3] ``v_template + shapedirs[..., :S'] @ betas_shape`` (differentiable). Use it as
        ``v_template`` with ``shapedirs[..., S':]`` and the expression coefficients as ``betas``.
    """
    check_tensor("v_template", v_template, ("V", 3), (torch.float32, torch.float64))
    check_tensor("shapedirs", shapedirs, (v_template.shape[0], 3, None), v_template.dtype, v_template.device)
    if not isinstance(betas_shape, torch.Tensor):
        raise TypeError(f"betas_shape: expected a torch.Tensor, got {type(betas_shape).__name__}")
    if betas_shape.dim() not in (1, 2) or (betas_shape.dim() == 2 and betas_shape.shape[0] != 1):
        raise ValueError(f"betas_shape: expected shape [S'] or [1,S'] (one shape per avatar), "
                         f"got {list(betas_shape.shape)}")
    bs = betas_shape.reshape(-1)
    if bs.shape[0] > shapedirs.shape[2]:
        raise ValueError(f"betas_shape: expected at most {shapedirs.shape[2]} coefficients, got {bs.shape[0]}")
    check_tensor("betas_shape", bs, dtype=v_template.dtype, device=v_template.device)
    return v_template + torch.einsum("vcs,s->vc", shapedirs[..., : bs.shape[0]], bs)


# The package exports the function ``flame_lbs`` under the module's name, so
# ``ffavatar_kernels.flame_lbs`` is the function: keep the helper reachable as documented.
flame_lbs.shape_template = shape_template
