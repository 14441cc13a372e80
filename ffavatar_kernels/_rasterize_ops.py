"""Fake (meta) kernels and autograd of the five compiled rasterize ops (torch.ops.ffavatar.rasterize_*).

Shapes (B scenes, C cameras, N Gaussians, Cc in {1, C} colour sets, D channels, TH x TW tiles). Every
op takes its tensors batched ([B,...], as below) or unbatched (the same without the leading B; the
first tensor argument decides, the outputs follow):
project: means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N], viewmats [B,C,4,4], Ks [B,C,3,3]
  -> radii [B,C,N,2] i32, means2d [B,C,N,2], depths [B,C,N], conics [B,C,N,3], opacities2d [B,C,N],
     tiles_per_gauss [B,C,N] i32
bin -> tile_offsets [B,C,TH,TW] i32, flatten_ids [n_isects] i32
render: colors [B,Cc,N,D] or [B,N,D] (shared by the cameras), backgrounds [B,C,D]? -> colors [B,C,H,W,D],
  alphas [B,C,H,W,1], last_ids [B,C,H,W] i32, final_Ts [B,C,H,W,1] (transmittance kept exactly for the
  backward; alphas = 1 - final_Ts), split_state [n] i32 (CUDA: which heavy tiles were blended in chunks
  and what the backward of each chunk starts from, csrc/rasterize/rasterize_split.h; empty on the CPU;
  render_bwd takes it as its optional last argument)
Backward ops: the output gradients v_render_colors / v_render_alphas / v_depths may have any strides that
flatten (e.g. the expanded gradient of a sum, or an expanded zero for an output with no gradient: nothing
is materialized); the others are made contiguous by the glue if needed.
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
        lead = tuple(means.shape[:-2]) + (viewmats.shape[-3], means.shape[-2])  # [B?,C,N]
        f = means.new_empty
        return (f(lead + (2,)), f(lead), f(lead + (3,)), f(lead), means.new_empty(lead + (2,), dtype=torch.int32),
                means.new_empty(lead, dtype=torch.int32))

    @torch.library.register_fake(lib + "rasterize_project_bwd")
    def _(means, quats, scales, opacities, viewmats, Ks, radii, v_means2d, v_depths, v_conics, v_opac2d,
          width, height, eps2d, antialiased):
        return (torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales),
                torch.empty_like(opacities))

    @torch.library.register_fake(lib + "rasterize_bin")
    def _(means2d, radii, depths, conics, opac2d, tiles_per_gauss, width, height, tile_size):
        th, tw = (height + tile_size - 1) // tile_size, (width + tile_size - 1) // tile_size
        n = torch.library.get_ctx().new_dynamic_size()
        return (means2d.new_empty(tuple(means2d.shape[:-2]) + (th, tw), dtype=torch.int32),
                means2d.new_empty((n,), dtype=torch.int32))

    @torch.library.register_fake(lib + "rasterize_render")
    def _(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width, height, tile_size):
        img = tuple(means2d.shape[:-2]) + (height, width)  # [B?,C,H,W]
        f = means2d.new_empty
        n_state = torch.library.get_ctx().new_dynamic_size()  # split plan: depends on the tile counts
        return (f(img + (colors.shape[-1],)), f(img + (1,)), f(img, dtype=torch.int32), f(img + (1,)),
                f((n_state,), dtype=torch.int32))

    @torch.library.register_fake(lib + "rasterize_render_bwd")
    def _(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, final_Ts, last_ids,
          v_render_colors, v_render_alphas, width, height, tile_size, split_state=None):
        return (torch.empty_like(means2d), torch.empty_like(conics), torch.empty_like(opac2d),
                torch.empty_like(colors))

    # ---- autograd (for direct callers of the ops; rasterize() uses _ProjectFn / _RenderFn) --------
    torch.library.register_autograd(lib + "rasterize_project", _project_backward, setup_context=_project_setup)
    torch.library.register_autograd(lib + "rasterize_render", _render_backward, setup_context=_render_setup)


# ---- autograd formulas (shared by the registered autograd and the Functions below) ---------------
# Output gradients that autograd leaves undefined stay None (set_materialize_grads(False)): the
# default would allocate zeros for every output without a gradient, including the int outputs (radii,
# tiles_per_gauss, last_ids) and final_Ts. A missing gradient of a per-pixel output or of depths is
# passed as an expanded zero (one element), which the backward ops read through strides.
_ZEROS: dict = {}  # (device, dtype) -> a zero scalar, read-only: one allocation and fill per device


def _zero(like, shape):
    """A zero of like's dtype/device expanded to shape (one element, nothing materialized)."""
    if torch.compiler.is_compiling() or type(like) not in (torch.Tensor, torch.nn.Parameter):
        return like.new_zeros(()).expand(shape)
    key = (like.device, like.dtype)
    z = _ZEROS.get(key)
    if z is None:
        with torch.inference_mode(False), torch.no_grad():
            z = _ZEROS[key] = torch.zeros((), dtype=like.dtype, device=like.device)
    return z.expand(shape)


def _project_setup(ctx, inputs, output):
    means, quats, scales, opacities, viewmats, Ks, width, height, _n, _f, eps2d, antialiased, _t = inputs
    ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, output[4])
    ctx.cfg = (width, height, eps2d, antialiased)
    ctx.mark_non_differentiable(output[4], output[5])
    ctx.set_materialize_grads(False)


def _project_backward(ctx, g_means2d, g_depths, g_conics, g_opac2d, g_radii=None, g_tiles=None):
    means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
    width, height, eps2d, antialiased = ctx.cfg
    shape = radii.shape[:-1]  # [B?,C,N]
    if g_means2d is None or g_conics is None or g_opac2d is None:  # rare: only depths has a gradient
        z = lambda *last: means.new_zeros(shape + last)
        g_means2d = z(2) if g_means2d is None else g_means2d
        g_conics = z(3) if g_conics is None else g_conics
        g_opac2d = z() if g_opac2d is None else g_opac2d
    if g_depths is None:  # RGB mode: depths feed nothing differentiable
        g_depths = _zero(means, shape)
    vm, vq, vs, vo = torch.ops.ffavatar.rasterize_project_bwd(
        means, quats, scales, opacities, viewmats, Ks, radii, g_means2d, g_depths, g_conics, g_opac2d,
        width, height, eps2d, antialiased)
    return vm, vq, vs, vo, None, None, None, None, None, None, None, None, None


def _render_setup(ctx, inputs, output):
    means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width, height, tile_size = inputs
    ctx.save_for_backward(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, output[3],
                          output[2], output[4])
    ctx.cfg = (width, height, tile_size)
    ctx.has_bg = backgrounds is not None
    ctx.mark_non_differentiable(output[2], output[3], output[4])
    ctx.set_materialize_grads(False)


def _render_backward(ctx, g_colors, g_alphas, g_last=None, g_final_t=None, g_state=None):
    means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, final_t, last_ids, state = \
        ctx.saved_tensors
    width, height, tile_size = ctx.cfg
    has_g_colors = g_colors is not None
    if not has_g_colors:
        g_colors = _zero(final_t, final_t.shape[:-1] + colors.shape[-1:])
    if g_alphas is None:
        g_alphas = _zero(final_t, final_t.shape)
    v_m2, v_cn, v_op, v_col = torch.ops.ffavatar.rasterize_render_bwd(
        means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, final_t, last_ids, g_colors,
        g_alphas, width, height, tile_size, state)
    v_bg = None
    if ctx.has_bg and ctx.needs_input_grad[4]:
        v_bg = (final_t * g_colors).sum(dim=(-3, -2)) if has_g_colors else backgrounds.new_zeros(backgrounds.shape)
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
