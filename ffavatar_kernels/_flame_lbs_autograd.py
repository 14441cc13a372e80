"""Autograd of the flame_lbs ops: the formulas registered for direct callers of
``torch.ops.ffavatar.flame_lbs_joints`` / ``flame_lbs`` / ``skin_gaussians`` (``register()`` in
flame_lbs.py attaches them), and the two composite Functions that the public ``flame_lbs()`` and
``skin_gaussians()`` run their ops through.

Composites (issue 15, "eager overhead"): one autograd node per public call instead of one per op
(LbsFn: joints + vertices; SkinFn: joints + vertices + Gaussians). Per call that is one
``Function.apply`` in the forward and one Python backward (on CUDA the engine's device thread takes
the GIL once, not three times); the gradients of A and betas, which two ops produce, are summed here
instead of by the engine; a backward op runs only when an input behind it needs a gradient (fitting
only offsets / quats runs the Gaussian backward alone). Same backward ops as the per-op formulas, so
the same gradients (a two-term sum is exact in either order).
"""
from __future__ import annotations

import torch

_ops = torch.ops.ffavatar


def contig(*grads):
    """Incoming gradients may be expanded / strided views; the kernels read dense buffers."""
    return tuple(None if g is None else g.contiguous() for g in grads)


# ---- registered formulas (direct callers of the ops) ---------------------------------------------
def joints_setup(ctx, inputs, output):
    betas, pose, J_template, J_dirs, parents = inputs
    ctx.parents = list(parents)
    ctx.save_for_backward(betas, pose, J_template, J_dirs)


def joints_backward(ctx, g_rot, g_joints, g_A):
    betas, pose, J_template, J_dirs = ctx.saved_tensors
    g_rot, g_joints, g_A = contig(g_rot, g_joints, g_A)
    gb, gp, g_rest = _ops.flame_lbs_joints_bwd(g_rot, g_joints, g_A, betas, pose, J_template,
                                               J_dirs, ctx.parents)
    n = ctx.needs_input_grad
    g_Jt = g_rest.sum(0) if n[2] else None
    g_Jd = torch.einsum("bjc,bs->jcs", g_rest, betas) if n[3] else None
    return gb if n[0] else None, gp if n[1] else None, g_Jt, g_Jd, None


def verts_setup(ctx, inputs, output):
    betas, rot, A, v_template, shapedirs, posedirs, W = inputs[:7]
    ctx.save_for_backward(betas, rot, A, shapedirs, posedirs, W, output[1])


def verts_backward(ctx, g_verts, g_vposed):
    betas, rot, A, shapedirs, posedirs, W, v_posed = ctx.saved_tensors
    n = ctx.needs_input_grad
    g_verts, g_vposed = contig(g_verts, g_vposed)
    gb, grot, gA, gvt, gsd, gpd, gW = _ops.flame_lbs_bwd(
        g_verts, g_vposed, betas, rot, A, shapedirs, posedirs, W, v_posed, n[3], n[4], n[5], n[6])
    return (gb if n[0] else None, grot if n[1] else None, gA if n[2] else None,
            gvt if n[3] else None, gsd if n[4] else None, gpd if n[5] else None,
            gW if n[6] else None, None)


def gauss_setup(ctx, inputs, output):
    v_posed, A, W, idx, aw, offsets, quats, means_only = inputs[:8]
    wg = inputs[9] if len(inputs) > 9 else None
    ctx.means_only = means_only
    ctx.has_off, ctx.has_q, ctx.has_wg = offsets is not None, quats is not None, wg is not None
    ctx.save_for_backward(v_posed, A, W, idx, aw, offsets, quats, wg)


def gauss_backward(ctx, g_means, g_quats):
    v_posed, A, W, idx, aw, offsets, quats, wg = ctx.saved_tensors
    n = ctx.needs_input_grad
    g_means, g_quats = contig(g_means, g_quats)
    gvp, gA, gW, gaw, goff, gq = _ops.skin_gaussians_bwd(
        g_means, g_quats, v_posed, A, W, idx, aw, offsets if ctx.has_off else None,
        quats if ctx.has_q else None, ctx.means_only, n[2], n[4], wg if ctx.has_wg else None)
    # joint_weights (last input) is a function of lbs_weights / anchor_weights: no gradient of its own
    return (gvp if n[0] else None, gA if n[1] else None, gW if n[2] else None, None,
            gaw if n[4] else None, goff if (ctx.has_off and n[5]) else None,
            gq if (ctx.has_q and n[6]) else None, None, None, None)


# ---- composites (the public functions) -----------------------------------------------------------
# Inputs, in this order: betas [B,S], pose [B,J,3] or [B,J,3,3], J_template [J,3], J_dirs [J,3,S],
# parents (list), v_template [V,3], shapedirs [V,3,S], posedirs [(J-1)*9,V*3], lbs_weights [V,J];
# SkinFn then: anchor_idx [N,K], anchor_weights [N,K], offsets [N,3] / [B,N,3] / None, quats [N,4] /
# None, means_only (bool), joint_weights [N,J] / None. Every tensor contiguous (the caller's job).
LBS_GRAD_INPUTS = (0, 1, 2, 3, 5, 6, 7, 8)  # the differentiable inputs of LbsFn (and of SkinFn's LBS part)
SKIN_GRAD_INPUTS = LBS_GRAD_INPUTS + (10, 11, 12)  # SkinFn's: + anchor_weights, offsets, quats


def _lbs_forward(ctx, betas, pose, Jt, Jd, par, vt, sd, pd, W):
    """Joints then vertices below the Autograd key (the registered Python autograd would cost host
    time for nothing: this node is the autograd); saves what _lbs_grads reads."""
    with torch._C._AutoDispatchBelowAutograd():
        rot, joints, A = _ops.flame_lbs_joints(betas, pose, Jt, Jd, par)
        verts, v_posed = _ops.flame_lbs(betas, rot, A, vt, sd, pd, W, betas.is_cuda)
    ctx.parents = par
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (nothing allocated)
    return verts, v_posed, joints, A, rot


def _lbs_grads(ctx, saved, g_verts, g_vposed, g_joints, g_A) -> list:
    """Gradients of the 9 LBS inputs from those of verts, v_posed, joints and A (None: none)."""
    betas, pose, Jt, Jd, sd, pd, W, rot, A, v_posed = saved
    n = ctx.needs_input_grad
    out = [None] * 9
    if not any(n[i] for i in LBS_GRAD_INPUTS):
        return out
    gb = grot = None
    if g_verts is not None or g_vposed is not None:
        gb, grot, gA_v, gvt, gsd, gpd, gW = _ops.flame_lbs_bwd(
            g_verts, g_vposed, betas, rot, A, sd, pd, W, v_posed, n[5], n[6], n[7], n[8])
        out[5], out[6], out[7], out[8] = (gvt if n[5] else None, gsd if n[6] else None,
                                          gpd if n[7] else None, gW if n[8] else None)
        if g_verts is not None:  # A reaches the skinned vertices only (v_posed is before skinning)
            g_A = gA_v if g_A is None else g_A + gA_v
    if (n[0] or n[1] or n[2] or n[3]) and not (grot is None and g_joints is None and g_A is None):
        gbj, gp, g_rest = _ops.flame_lbs_joints_bwd(grot, g_joints, g_A, betas, pose, Jt, Jd, ctx.parents)
        gb = gbj if gb is None else gb + gbj
        out[1] = gp if n[1] else None
        out[2] = g_rest.sum(0) if n[2] else None
        out[3] = torch.einsum("bjc,bs->jcs", g_rest, betas) if n[3] else None
    out[0] = gb if n[0] else None
    return out


class LbsFn(torch.autograd.Function):
    """flame_lbs(): (verts [B,V,3], joints [B,J,3], A [B,J,4,4]) from the 9 LBS inputs."""

    @staticmethod
    def forward(ctx, betas, pose, Jt, Jd, par, vt, sd, pd, W):
        verts, v_posed, joints, A, rot = _lbs_forward(ctx, betas, pose, Jt, Jd, par, vt, sd, pd, W)
        ctx.save_for_backward(betas, pose, Jt, Jd, sd, pd, W, rot, A, v_posed)
        return verts, joints, A

    @staticmethod
    def backward(ctx, g_verts, g_joints, g_A):
        g_verts, g_joints, g_A = contig(g_verts, g_joints, g_A)
        return tuple(_lbs_grads(ctx, ctx.saved_tensors, g_verts, None, g_joints, g_A))


class SkinFn(torch.autograd.Function):
    """skin_gaussians(): (means [B,N,3], quats [B,N,4]) from the 9 LBS inputs and the Gaussians'."""

    @staticmethod
    def forward(ctx, betas, pose, Jt, Jd, par, vt, sd, pd, W, idx, aw, offsets, quats, means_only, wg):
        _, v_posed, _, A, rot = _lbs_forward(ctx, betas, pose, Jt, Jd, par, vt, sd, pd, W)
        with torch._C._AutoDispatchBelowAutograd():
            means, qout = _ops.skin_gaussians(v_posed, A, W, idx, aw, offsets, quats, means_only,
                                              v_posed.is_cuda, wg)
        ctx.means_only = means_only
        ctx.save_for_backward(betas, pose, Jt, Jd, sd, pd, W, rot, A, v_posed, idx, aw, offsets, quats, wg)
        return means, qout

    @staticmethod
    def backward(ctx, g_means, g_quats):
        if g_means is None and g_quats is None:
            return (None,) * 15
        saved = ctx.saved_tensors
        W, A, v_posed = saved[6], saved[8], saved[9]
        idx, aw, offsets, quats, wg = saved[10:]
        n = ctx.needs_input_grad
        g_means, g_quats = contig(g_means, g_quats)
        gvp, gA, gW, gaw, goff, gq = _ops.skin_gaussians_bwd(
            g_means, g_quats, v_posed, A, W, idx, aw, offsets, quats, ctx.means_only, n[8], n[10], wg)
        out = _lbs_grads(ctx, saved[:10], None, gvp, None, gA)
        if n[8]:  # lbs_weights: through the Gaussians' blended transforms (and the vertices, if any)
            out[8] = gW if out[8] is None else out[8] + gW
        # joint_weights (last input) is a function of lbs_weights / anchor_weights: no gradient of its own
        return (*out, None, gaw if n[10] else None, goff if (offsets is not None and n[11]) else None,
                gq if (quats is not None and n[12]) else None, None, None)
