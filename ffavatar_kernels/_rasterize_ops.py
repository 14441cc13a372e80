"""Fake (meta) kernels and autograd of the five compiled rasterize ops (torch.ops.ffavatar.rasterize_*).

Shapes (B scenes, C cameras, N Gaussians, Cc in {1, C} colour sets, D channels, TH x TW tiles):
project: means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N], viewmats [B,C,4,4], Ks [B,C,3,3]
  -> radii [B,C,N,2] i32, means2d [B,C,N,2], depths [B,C,N], conics [B,C,N,3], opacities2d [B,C,N],
     tiles_per_gauss [B,C,N] i32
bin -> tile_offsets [B,C,TH,TW] i32, flatten_ids [n_isects] i32
render: colors [B,Cc,N,D], backgrounds [B,C,D]? -> colors [B,C,H,W,D], alphas [B,C,H,W,1], last_ids [B,C,H,W] i32,
  final_Ts [B,C,H,W,1] (transmittance kept exactly for the backward; alphas = 1 - final_Ts)
"""
from __future__ import annotations

import torch

from . import _autograd, _ext

_OPS_READY = False


def _def(name: str) -> bool:
    return hasattr(torch.ops.ffavatar, name)


def register() -> None:
    """Attach fake kernels and autograd once (no-op when the compiled library is missing)."""
    global _OPS_READY
    if _OPS_READY or not _ext.load() or not _def("rasterize_project"):
        return
    _OPS_READY = True
    lib = "ffavatar::"

    @torch.library.register_fake(lib + "rasterize_project")
    def _(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
          antialiased, tile_size):
        B, N = means.shape[0], means.shape[1]
        C = viewmats.shape[1]
        f = means.new_empty
        return (f((B, C, N, 2)), f((B, C, N)), f((B, C, N, 3)), f((B, C, N)),
                means.new_empty((B, C, N, 2), dtype=torch.int32), means.new_empty((B, C, N), dtype=torch.int32))

    @torch.library.register_fake(lib + "rasterize_project_bwd")
    def _(means, quats, scales, opacities, viewmats, Ks, radii, v_means2d, v_depths, v_conics, v_opac2d,
          width, height, eps2d, antialiased):
        return (torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales),
                torch.empty_like(opacities))

    @torch.library.register_fake(lib + "rasterize_bin")
    def _(means2d, radii, depths, conics, opac2d, tiles_per_gauss, width, height, tile_size):
        B, C = means2d.shape[0], means2d.shape[1]
        th, tw = (height + tile_size - 1) // tile_size, (width + tile_size - 1) // tile_size
        n = torch.library.get_ctx().new_dynamic_size()
        return (means2d.new_empty((B, C, th, tw), dtype=torch.int32), means2d.new_empty((n,), dtype=torch.int32))

    @torch.library.register_fake(lib + "rasterize_render")
    def _(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width, height, tile_size):
        B, C = means2d.shape[0], means2d.shape[1]
        D = colors.shape[-1]
        return (means2d.new_empty((B, C, height, width, D)), means2d.new_empty((B, C, height, width, 1)),
                means2d.new_empty((B, C, height, width), dtype=torch.int32),
                means2d.new_empty((B, C, height, width, 1)))

    @torch.library.register_fake(lib + "rasterize_render_bwd")
    def _(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, final_Ts, last_ids,
          v_render_colors, v_render_alphas, width, height, tile_size):
        return (torch.empty_like(means2d), torch.empty_like(conics), torch.empty_like(opac2d),
                torch.empty_like(colors))

    # ---- autograd (for direct callers of the ops; rasterize() uses _ProjectFn / _RenderFn) --------
    torch.library.register_autograd(lib + "rasterize_project", _project_backward, setup_context=_project_setup)
    torch.library.register_autograd(lib + "rasterize_render", _render_backward, setup_context=_render_setup)


# ---- autograd formulas (shared by the registered autograd and the Functions below) ---------------
def _project_setup(ctx, inputs, output):
    means, quats, scales, opacities, viewmats, Ks, width, height, _n, _f, eps2d, antialiased, _t = inputs
    ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, output[4])
    ctx.cfg = (width, height, eps2d, antialiased)
    ctx.mark_non_differentiable(output[4], output[5])


def _project_backward(ctx, g_means2d, g_depths, g_conics, g_opac2d, g_radii, g_tiles):
    means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
    width, height, eps2d, antialiased = ctx.cfg
    B, N, C = means.shape[0], means.shape[1], viewmats.shape[1]
    z = lambda *s: means.new_zeros(s)
    g_means2d = z(B, C, N, 2) if g_means2d is None else g_means2d.contiguous()
    g_depths = z(B, C, N) if g_depths is None else g_depths.contiguous()
    g_conics = z(B, C, N, 3) if g_conics is None else g_conics.contiguous()
    g_opac2d = z(B, C, N) if g_opac2d is None else g_opac2d.contiguous()
    vm, vq, vs, vo = torch.ops.ffavatar.rasterize_project_bwd(
        means, quats, scales, opacities, viewmats, Ks, radii, g_means2d, g_depths, g_conics, g_opac2d,
        width, height, eps2d, antialiased)
    return vm, vq, vs, vo, None, None, None, None, None, None, None, None, None


def _render_setup(ctx, inputs, output):
    means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width, height, tile_size = inputs
    ctx.save_for_backward(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, output[3],
                          output[2])
    ctx.cfg = (width, height, tile_size)
    ctx.has_bg = backgrounds is not None
    ctx.mark_non_differentiable(output[2], output[3])


def _render_backward(ctx, g_colors, g_alphas, g_last, g_final_t):
    means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, final_t, last_ids = ctx.saved_tensors
    width, height, tile_size = ctx.cfg
    g_colors = torch.zeros(final_t.shape[:-1] + colors.shape[-1:], dtype=final_t.dtype, device=final_t.device) \
        if g_colors is None else g_colors.contiguous()
    g_alphas = torch.zeros_like(final_t) if g_alphas is None else g_alphas.contiguous()
    v_m2, v_cn, v_op, v_col = torch.ops.ffavatar.rasterize_render_bwd(
        means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, final_t, last_ids, g_colors,
        g_alphas, width, height, tile_size)
    v_bg = None
    if ctx.has_bg and ctx.needs_input_grad[4]:
        v_bg = (final_t * g_colors).sum(dim=(-3, -2))
    return v_m2, v_cn, v_op, v_col, v_bg, None, None, None, None, None


# ---- low-overhead entry points for rasterize() (see _autograd.py) -------------------------------
_ProjectFn = _autograd.function("_ProjectFn", lambda *a: torch.ops.ffavatar.rasterize_project(*a), _project_setup,
                                _project_backward)
_RenderFn = _autograd.function("_RenderFn", lambda *a: torch.ops.ffavatar.rasterize_render(*a), _render_setup,
                               _render_backward)


def project(means, quats, scales, opacities, viewmats, Ks, *cfg):
    """torch.ops.ffavatar.rasterize_project with autograd, minimal host overhead."""
    args = (means, quats, scales, opacities, viewmats, Ks, *cfg)
    return _autograd.call(torch.ops.ffavatar.rasterize_project, _ProjectFn, args[:6], args)


def render(means2d, conics, opac2d, colors, backgrounds, *rest):
    """torch.ops.ffavatar.rasterize_render with autograd, minimal host overhead."""
    args = (means2d, conics, opac2d, colors, backgrounds, *rest)
    return _autograd.call(torch.ops.ffavatar.rasterize_render, _RenderFn, args[:5], args)


def bin_(*args):
    """torch.ops.ffavatar.rasterize_bin (not differentiable: int outputs), below the Autograd key."""
    return _autograd.call(torch.ops.ffavatar.rasterize_bin, None, (), args)
