"""Tile-based 3D Gaussian splatting with backward (``gsplat.rasterization`` contract, 1.5.3 conventions).

The op is a pipeline of compiled ops (``torch.ops.ffavatar.rasterize_*``): project (EWA, fused with
the tight tile count) -> bin (scan, keys, radix sort, tile offsets) -> render (front-to-back
blending). Autograd flows through project and render; ``meta["means2d"]`` is a node of the graph,
so ``meta["means2d"].retain_grad()`` before ``backward()`` gives its gradient (as in gsplat).

The compiled ops' shapes (B scenes, C cameras, N Gaussians, Cc in {1, C} colour sets, D channels, TH x TW tiles). Every
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

import math
import operator

import torch

from . import _autograd, _ext
from ._api import public_op
from ._validate import check_same_device, check_tensor


# ================================================================================================
# registration: fake kernels and autograd of the compiled ops
# ================================================================================================
def _def(name: str) -> bool:
    return hasattr(torch.ops.ffavatar, name)


_REGISTERED = False


def register() -> None:
    """Attach fake kernels and autograd once (the op anatomy's ``register()``, called by the
    package's ``__init__``; no-op when the compiled library is missing)."""
    global _REGISTERED
    if _REGISTERED or not _ext.load() or not _def("rasterize_project"):
        return
    _REGISTERED = True
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
          width, height, tile_size, eps2d, antialiased):
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
    means, quats, scales, opacities, viewmats, Ks, width, height, _n, _f, eps2d, antialiased, tile_size = inputs
    ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, output[4])
    ctx.cfg = (width, height, tile_size, eps2d, antialiased)
    ctx.mark_non_differentiable(output[4], output[5])
    ctx.set_materialize_grads(False)


def _project_backward(ctx, g_means2d, g_depths, g_conics, g_opac2d, g_radii=None, g_tiles=None):
    means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
    width, height, tile_size, eps2d, antialiased = ctx.cfg
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
        width, height, tile_size, eps2d, antialiased)
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


# ---- low-overhead entry points of the three stages (see _autograd.py) ----------------------------
_ProjectFn = _autograd.function("_ProjectFn", lambda *a: torch.ops.ffavatar.rasterize_project(*a), _project_setup,
                                _project_backward)
_RenderFn = _autograd.function("_RenderFn", lambda *a: torch.ops.ffavatar.rasterize_render(*a), _render_setup,
                               _render_backward)


def _project(means, quats, scales, opacities, viewmats, Ks, *cfg):
    """torch.ops.ffavatar.rasterize_project with autograd, minimal host overhead."""
    args = (means, quats, scales, opacities, viewmats, Ks, *cfg)
    return _autograd.call(torch.ops.ffavatar.rasterize_project, _ProjectFn, args[:6], args)


def _render(means2d, conics, opac2d, colors, backgrounds, *rest):
    """torch.ops.ffavatar.rasterize_render with autograd, minimal host overhead."""
    args = (means2d, conics, opac2d, colors, backgrounds, *rest)
    return _autograd.call(torch.ops.ffavatar.rasterize_render, _RenderFn, args[:5], args)


def _bin(*args):
    """torch.ops.ffavatar.rasterize_bin (not differentiable: int outputs), below the Autograd key."""
    return _autograd.call(torch.ops.ffavatar.rasterize_bin, None, (), args)


# ================================================================================================
# the public op
# ================================================================================================
_RENDER_MODES = ("RGB", "ED", "RGB+ED")
MAX_IMAGE_SIDE = 32768  # csrc/rasterize/rasterize_checks.h kMaxImageSide (int32 pixel indices per image)
_RASTER_MODES = ("classic", "antialiased")


def _depth_background(bg, D, Dp, render_mode):
    """Backgrounds with Dp channels (one per output channel) are used as given; gsplat's form, with
    only the D colour channels, gets a zero depth background in the ED modes (as gsplat does)."""
    if bg.shape[-1] == Dp:
        return bg
    if render_mode == "RGB+ED" and bg.shape[-1] == D:
        return torch.cat([bg, bg.new_zeros(bg.shape[:-1] + (1,))], -1)
    if render_mode == "ED" and bg.shape[-1] == D:
        return bg.new_zeros(bg.shape[:-1] + (1,))
    raise ValueError(f"backgrounds: expected last dim {Dp} (channels of render_mode {render_mode!r})"
                     f"{'' if render_mode == 'RGB' else f' or {D} (colour channels, zero depth background)'}, "
                     f"got shape {list(bg.shape)}")


def _fast_ok(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds) -> bool:
    """Cheap all-good test (the common case); any doubt falls through to the detailed checks."""
    try:
        sh = means.shape
        lead, N = sh[:-2], sh[-2]
        if len(lead) > 1 or sh[-1] != 3:
            return False
        dt, dev = means.dtype, means.device
        vs = viewmats.shape
        lc = lead + vs[-3:-2]  # (B?, C)
        if (len(vs) != len(lc) + 2 or vs != lc + (4, 4) or Ks.shape != lc + (3, 3) or scales.shape != sh
                or quats.shape != lead + (N, 4) or opacities.shape != lead + (N,)):
            return False
        cs = colors.shape[:-1]
        if cs != lead + (N,) and cs != lc + (N,):
            return False
        if dt is not torch.float32 and (dt is not torch.float64 or dev.type == "cuda"):
            return False
        if backgrounds is not None:
            if backgrounds.shape[:-1] != lc or backgrounds.dtype != dt or backgrounds.device != dev:
                return False
        return (quats.dtype == dt and scales.dtype == dt and opacities.dtype == dt and colors.dtype == dt
                and viewmats.dtype == dt and Ks.dtype == dt and quats.device == dev and scales.device == dev
                and opacities.device == dev and colors.device == dev and viewmats.device == dev
                and Ks.device == dev)
    except (AttributeError, TypeError, IndexError):
        return False


def _check(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, render_mode):
    """The detailed checks (clear errors naming the argument); run when _fast_ok says no."""
    if not isinstance(means, torch.Tensor):
        raise TypeError(f"means: expected a torch.Tensor, got {type(means).__name__}")
    if means.dim() not in (2, 3):
        raise ValueError(f"means: expected shape [N,3] or [B,N,3], got {list(means.shape)}")
    batched = means.dim() == 3
    pre = ("B",) if batched else ()
    sizes: dict = {}
    floats = (torch.float32, torch.float64)
    check_tensor("means", means, pre + ("N", 3), floats, sizes=sizes)
    check_tensor("quats", quats, pre + ("N", 4), means.dtype, sizes=sizes)
    check_tensor("scales", scales, pre + ("N", 3), means.dtype, sizes=sizes)
    check_tensor("opacities", opacities, pre + ("N",), means.dtype, sizes=sizes)
    check_tensor("viewmats", viewmats, pre + ("C", 4, 4), means.dtype, sizes=sizes)
    check_tensor("Ks", Ks, pre + ("C", 3, 3), means.dtype, sizes=sizes)
    if not isinstance(colors, torch.Tensor):
        raise TypeError(f"colors: expected a torch.Tensor, got {type(colors).__name__}")
    if colors.dim() == len(pre) + 2:
        check_tensor("colors", colors, pre + ("N", None), means.dtype, sizes=sizes)
    else:
        want = "[B,N,D] or [B,C,N,D]" if batched else "[N,D] or [C,N,D]"
        if colors.dim() != len(pre) + 3:
            raise ValueError(f"colors: expected shape {want}, got {list(colors.shape)}")
        check_tensor("colors", colors, pre + ("C", "N", None), means.dtype, sizes=sizes)
    D = colors.shape[-1]
    Dp = {"RGB": D, "ED": 1, "RGB+ED": D + 1}[render_mode]
    if backgrounds is not None:
        check_tensor("backgrounds", backgrounds, pre + ("C", None), means.dtype, sizes=sizes)
        _depth_background(backgrounds, D, Dp, render_mode)  # raises on a wrong channel count
    dev = check_same_device(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                            viewmats=viewmats, Ks=Ks, backgrounds=backgrounds)
    if dev.type == "cuda" and means.dtype != torch.float32:
        raise TypeError(f"means: expected dtype float32 on CUDA, got {str(means.dtype).replace('torch.', '')}")


@public_op("rasterize")
def rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane=0.01,
              far_plane=1e10, eps2d=0.3, render_mode="RGB", rasterize_mode="classic", backgrounds=None,
              tile_size=16):
    """Render 3D Gaussians through pinhole cameras (tile-based splatting, forward and backward).

    Args:
        means: [N,3] or [B,N,3] Gaussian centres (world).
        quats: [N,4] or [B,N,4] rotations, wxyz, need not be normalized.
        scales: [N,3] or [B,N,3] axis scales (already activated, > 0).
        opacities: [N] or [B,N] opacities in [0,1].
        colors: [N,D] or [C,N,D] (batched: [B,N,D] or [B,C,N,D]); per Gaussian or per camera, any D.
        viewmats: [C,4,4] or [B,C,4,4] world-to-camera.
        Ks: [C,3,3] or [B,C,3,3] pinhole intrinsics.
        width, height: image size in pixels.
        near_plane, far_plane: depth culling (camera z).
        eps2d: low-pass added to the 2D covariance diagonal.
        render_mode: "RGB", "ED" (expected depth) or "RGB+ED" (depth appended as the last channel).
        rasterize_mode: "classic" or "antialiased" (opacity x sqrt(det Σ / det(Σ + eps2d I))).
        backgrounds: [C,D'] or [B,C,D'] (D' = channels of the render mode), added as T x background.
            In the ED modes the depth value is where no Gaussian is: ED = sum(w z)/alpha + T x bg_depth.
            gsplat's form [...,C,D] (colour channels only) is accepted too and means bg_depth = 0.
        tile_size: tile edge in pixels (1..32).

    Returns:
        render_colors [C,H,W,D'] (or [B,C,H,W,D']), render_alphas [C,H,W,1] (or [B,C,H,W,1]), and
        meta: radii [...,C,N,2] int32, means2d [...,C,N,2], depths [...,C,N], conics [...,C,N,3],
        opacities [...,C,N] (after compensation), visibility [...,C,N] bool, tiles_per_gauss,
        isect_offsets [...,C,TH,TW], flatten_ids [n_isects], n_isects, last_ids, sizes.
    """
    if render_mode not in _RENDER_MODES:
        raise ValueError(f"render_mode: expected one of {_RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in _RASTER_MODES:
        raise ValueError(f"rasterize_mode: expected one of {_RASTER_MODES}, got {rasterize_mode!r}")
    if type(width) is not int or type(height) is not int or type(tile_size) is not int:
        try:
            width, height, tile_size = (operator.index(v) for v in (width, height, tile_size))
        except TypeError:
            raise TypeError(f"width, height, tile_size: expected ints, got {type(width).__name__}, "
                            f"{type(height).__name__}, {type(tile_size).__name__}") from None
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise ValueError(f"width, height: expected 1..{MAX_IMAGE_SIDE} pixels each, got {width}x{height}")
    if not 1 <= tile_size <= 32:
        raise ValueError(f"tile_size: expected 1..32, got {tile_size}")
    if not (math.isfinite(near_plane) and near_plane < far_plane) or math.isnan(far_plane):
        raise ValueError(f"near_plane, far_plane: expected finite near < far, got {near_plane}, {far_plane}")
    if not (math.isfinite(eps2d) and eps2d >= 0):
        raise ValueError(f"eps2d: expected a finite value >= 0, got {eps2d}")
    if not _fast_ok(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds):
        _check(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, render_mode)
    if not _REGISTERED:
        _ext.require("rasterize")
    bg = bg_depth = None
    if backgrounds is not None:
        D = colors.shape[-1]
        bg = _depth_background(backgrounds, D, D if render_mode == "RGB" else 1 if render_mode == "ED" else D + 1,
                               render_mode).contiguous()
        if render_mode != "RGB":  # the depth channel is blended over 0; its background is added after
            bg_depth = bg[..., -1:]  # [B?,C,1]
            bg = torch.cat([bg[..., :-1], torch.zeros_like(bg_depth)], -1)
    try:
        return _rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                          far_plane, eps2d, render_mode, rasterize_mode, bg, bg_depth, tile_size)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)):
            raise
        B = f"{means.shape[0]} scenes x " if means.dim() == 3 else ""
        msg = (f"rasterize: out of memory rendering {B}{means.shape[-2]} Gaussians x {viewmats.shape[-3]} cameras "
               f"at {width}x{height} on {means.device}: {str(exc).splitlines()[0]}")
        raise (torch.OutOfMemoryError(msg) if isinstance(exc, torch.OutOfMemoryError) else RuntimeError(msg)) from exc


def _rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
               render_mode, rasterize_mode, bg, bg_depth, tile_size):
    """The body of :func:`rasterize` after validation (its OOM errors get the render's size added)."""
    # The ops take the tensors batched ([B,...]) or not, as given: no reshapes on the way in or out.
    batched = means.dim() == 3
    means2d, depths, conics, opac2d, radii, tiles = _project(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(), viewmats.contiguous(),
        Ks.contiguous(), width, height, float(near_plane), float(far_plane), float(eps2d),
        rasterize_mode == "antialiased", tile_size)
    if render_mode == "RGB":
        cols = colors.contiguous()
    else:  # before the bin: the Python between its host sync and the render launch stays minimal
        cols = depths[..., None]
        if render_mode == "RGB+ED":
            c = colors if colors.dim() == cols.dim() else colors.unsqueeze(-3)  # [B?,N,D] -> [B?,1,N,D]
            cols = torch.cat([c.expand(depths.shape + colors.shape[-1:]), cols], -1)
    offsets, flatten_ids = _bin(means2d, radii, depths, conics, opac2d, tiles, width, height,
                                               tile_size)
    img, alpha, last_ids, _final_t, _split = _render(means2d, conics, opac2d, cols, bg, offsets, flatten_ids,
                                                           width, height, tile_size)
    # Meta-only work after the render launch, where its host time hides behind the render kernel.
    # radii >= 0: any(-1) as one compare of the pair's 8 bytes (torch's any over a last dim of 2 is a
    # reduction kernel ~4x slower on the GPU)
    visibility = radii.view(torch.int64)[..., 0] != 0
    if render_mode != "RGB":
        # Expected depth of the Gaussians; where they leave transmittance T, the depth background
        # fills in: ED = sum(w z) / alpha + T * bg_depth (bg_depth = 0, gsplat's case, gives gsplat's ED).
        depth = img[..., -1:] / alpha.clamp(min=1e-10)
        if bg_depth is not None:
            depth = depth + (1 - alpha) * bg_depth[..., None, None, :]
        img = torch.cat([img[..., :-1], depth], -1)
    C = viewmats.shape[-3]
    meta = dict(radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=opac2d,
                visibility=visibility, tiles_per_gauss=tiles, isect_offsets=offsets, last_ids=last_ids,
                flatten_ids=flatten_ids, n_isects=flatten_ids.shape[0], width=width, height=height,
                tile_size=tile_size, tile_width=(width + tile_size - 1) // tile_size,
                tile_height=(height + tile_size - 1) // tile_size, n_cameras=C,
                n_batches=means.shape[0] if batched else None)
    return img, alpha, meta
