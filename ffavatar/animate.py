"""Animation: a procedural motion script and batched rendering of the skinned Gaussian head.

One call renders B frames: ``skin_gaussians`` poses the anchored Gaussians of all frames at once
([B,N,3] means, [B,N,4] rotations), the Gaussians are shaded, and ``rasterize`` renders the B
scenes, each through its own camera ([B,1,4,4] viewmats, [B,1,3,3] Ks).

Shading (Lambert + ambient, from the posed normals of every frame): a Gaussian's normal is the third
axis of its posed rotation (the canonical frames put the surface normal there). A key light and a
weaker fill light are fixed relative to the camera (key: above-left of the camera, fill: right), so
the face stays lit while the camera orbits; ``color = albedo * (ambient + key * max(0, n.l_key) +
fill * max(0, n.l_fill))``.

Backends: the compiled ops of ``ffavatar_kernels`` when the extension is built (and has kernels for
the device), else the pure-PyTorch reference twins. The reference rasterizer blends densely
(pixels x Gaussians), so on that path frames are composited tile by tile: the projection is done
once per frame and each 8x8 tile blends only the Gaussians whose screen extent overlaps it (many
tiles per call) -- the same image, at a cost proportional to the actual overlap.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import torch

from .camera import intrinsics, orbit
from .flame import FlameModel
from .gaussians import CanonicalGaussians

__all__ = ["Backend", "select_backend", "motion_script", "shade", "render_frames", "Animator"]


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Backend:
    """The skinning and rasterization functions used for rendering, and a description."""

    skin_gaussians: Callable
    rasterize: Callable
    description: str
    tiled_reference: bool = False


def _has_kernel(op_names: tuple[str, ...], key: str) -> bool:
    for name in op_names:
        try:
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"ffavatar::{name}", key):
                return True
        except RuntimeError:
            continue
    return False


def select_backend(device: "torch.device | str" = "cpu", prefer: str = "auto") -> Backend:
    """Pick the compiled ops when available for ``device``, else the reference twins.

    Args:
        device: where rendering runs ("cpu" or "cuda").
        prefer: "auto" (compiled when available), "compiled" (error if missing) or "reference".

    Returns:
        A :class:`Backend`; ``description`` says which path each op takes.
    """
    if prefer not in ("auto", "compiled", "reference"):
        raise ValueError(f"select_backend: prefer must be 'auto', 'compiled' or 'reference', got {prefer!r}")
    import ffavatar_kernels
    from ffavatar_kernels import _ext
    from ffavatar_kernels.reference import lbs as ref_lbs
    from ffavatar_kernels.reference import rasterize as ref_rast

    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    loaded = prefer != "reference" and _ext.load()
    lbs_ok = loaded and _has_kernel(("skin_gaussians", "skin_gaussians_fwd"), key)
    rast_ok = loaded and _has_kernel(("rasterize_render", "rasterize_fwd", "rasterize"), key)
    if prefer == "compiled" and not (lbs_ok and rast_ok):
        _ext.require("skin_gaussians/rasterize")
        raise RuntimeError(f"select_backend: the compiled library has no {key} kernels for "
                           f"{'skin_gaussians' if not lbs_ok else 'rasterize'}")
    skin = ffavatar_kernels.skin_gaussians if lbs_ok else ref_lbs.skin_gaussians
    rast = ffavatar_kernels.rasterize if rast_ok else ref_rast.rasterize
    kind = f"compiled {'CUDA' if key == 'CUDA' else 'C++ CPU'}"
    desc = (f"skin_gaussians: {kind if lbs_ok else 'PyTorch reference'}, "
            f"rasterize: {kind if rast_ok else 'PyTorch reference (tiled)'}")
    return Backend(skin_gaussians=skin, rasterize=rast, description=desc, tiled_reference=not rast_ok)


# ---------------------------------------------------------------------------------------------
# motion
# ---------------------------------------------------------------------------------------------
def _check_fps(fps, where: str) -> None:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise TypeError(f"{where}: fps expected a finite number > 0, got {type(fps).__name__} {fps!r}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{where}: fps expected a finite number > 0, got {fps}")


def motion_script(num_frames: int, n_shape: int = 300, n_expr: int = 100, *, num_joints: int = 5,
                  fps: float = 24.0, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic talking-head motion: expressions, jaw, eye saccades, head nod and turn.

    Args:
        num_frames: T.
        n_shape, n_expr: blendshape counts of the model (shape stays 0; S = n_shape + n_expr).
        num_joints: J (FLAME: global, neck, jaw, left eye, right eye).
        fps: frame rate the motion is timed for (a finite number > 0).

    Returns:
        betas [T,S] and pose [T,J*3] (axis-angle per joint).

    Raises:
        TypeError: ``fps`` is not a real number.
        ValueError: ``num_frames`` < 0, or ``fps`` is not finite and > 0.
    """
    if num_frames < 0:
        raise ValueError(f"motion_script: num_frames must be >= 0, got {num_frames}")
    _check_fps(fps, "motion_script")
    t = torch.arange(num_frames, dtype=torch.float64) / fps                      # seconds
    S = n_shape + n_expr
    betas = torch.zeros(num_frames, S, dtype=torch.float64)
    if n_expr > 0:
        e = betas[:, n_shape:]
        amp = [1.2, 1.0, 1.5, 0.8, 1.0, 0.8, 1.0, 1.5, 1.0, 0.8]
        for k in range(min(n_expr, len(amp))):
            e[:, k] = amp[k] * torch.sin(2 * math.pi * (0.35 + 0.13 * k) * t + 1.3 * k).clamp_min(-0.3)
    pose = torch.zeros(num_frames, num_joints, 3, dtype=torch.float64)
    if num_joints >= 1:
        pose[:, 0, 1] = 0.10 * torch.sin(2 * math.pi * 0.25 * t)                   # slow body sway
    if num_joints >= 2:
        pose[:, 1, 0] = 0.18 * torch.sin(2 * math.pi * 0.5 * t + 0.4)              # nod
        pose[:, 1, 1] = 0.35 * torch.sin(2 * math.pi * 0.3 * t)                    # turn
        pose[:, 1, 2] = 0.08 * torch.sin(2 * math.pi * 0.4 * t + 1.0)              # tilt
    if num_joints >= 3:
        pose[:, 2, 0] = 0.22 * (0.5 - 0.5 * torch.cos(2 * math.pi * 0.9 * t))       # jaw open/close
    if num_joints >= 5:
        # saccades: hold a gaze target, jump to the next every 0.6 s
        k = torch.floor(t / 0.6)
        yaw = 0.35 * torch.sin(2.7 * k + 0.5)
        pitch = 0.18 * torch.sin(1.9 * k + 1.1)
        pose[:, 3, 0] = pose[:, 4, 0] = pitch
        pose[:, 3, 1] = pose[:, 4, 1] = yaw
    return (betas.to(dtype=dtype, device=device),
            pose.reshape(num_frames, num_joints * 3).to(dtype=dtype, device=device))


# ---------------------------------------------------------------------------------------------
# shading and rendering
# ---------------------------------------------------------------------------------------------
def _quat_normal(q: torch.Tensor) -> torch.Tensor:
    """Third column of the rotation of wxyz quaternions [...,4] (any norm) -> [...,3]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)


def shade(albedo: torch.Tensor, quats: torch.Tensor, viewmats: torch.Tensor, *, ambient: float = 0.38,
          key: float = 0.72, fill: float = 0.22) -> torch.Tensor:
    """Lambert + ambient shading with lights attached to the camera.

    Args:
        albedo: [N,3] or [B,N,3] colors in [0,1].
        quats: [B,N,4] posed rotations (wxyz); their third axis is the surface normal.
        viewmats: [B,4,4] world-to-camera of each frame.

    Returns:
        [B,N,3] shaded colors in [0,1].
    """
    n = _quat_normal(quats)                                                       # [B,N,3]
    Rt = viewmats[:, :3, :3].transpose(1, 2)                                      # camera -> world
    lk = torch.tensor([-0.45, -0.55, -1.0], dtype=n.dtype, device=n.device)       # toward the key light
    lf = torch.tensor([0.8, 0.1, -0.6], dtype=n.dtype, device=n.device)
    lk, lf = lk / lk.norm(), lf / lf.norm()
    lk_w = (Rt @ lk)[:, None, :]                                                  # [B,1,3]
    lf_w = (Rt @ lf)[:, None, :]
    lum = ambient + key * (n * lk_w).sum(-1).clamp_min(0) + fill * (n * lf_w).sum(-1).clamp_min(0)
    return (albedo * lum[..., None]).clamp(0.0, 1.0)


def _tile_pairs(m2: torch.Tensor, r: torch.Tensor, ok: torch.Tensor, tile: int, ntx: int, nty: int):
    """(tile id, Gaussian id) pairs of every Gaussian and every tile its screen box overlaps.

    m2 [N,2] centers, r [N,2] radii (pixels), ok [N] -> tile_ids [P], gauss_ids [P] sorted by tile,
    then Gaussian id (the order the dense blend would see them in). The box test matches the
    reference's culling: a Gaussian touches tile column c iff mx - rx < (c+1)*tile and
    mx + rx > c*tile.
    """
    cx0 = torch.floor((m2[:, 0] - r[:, 0]) / tile).clamp(0, ntx - 1)
    cx1 = (torch.ceil((m2[:, 0] + r[:, 0]) / tile) - 1).clamp(-1, ntx - 1)
    cy0 = torch.floor((m2[:, 1] - r[:, 1]) / tile).clamp(0, nty - 1)
    cy1 = (torch.ceil((m2[:, 1] + r[:, 1]) / tile) - 1).clamp(-1, nty - 1)
    nx = (cx1 - cx0 + 1).clamp_min(0).long()
    ny = (cy1 - cy0 + 1).clamp_min(0).long()
    cnt = torch.where(ok, nx * ny, torch.zeros_like(nx))
    gid = torch.repeat_interleave(torch.arange(len(cnt), device=m2.device), cnt)
    first = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(len(gid), device=m2.device) - first[gid]             # k-th tile of its Gaussian
    tx = cx0.long()[gid] + k % nx[gid]
    ty = cy0.long()[gid] + k // nx[gid]
    tid = ty * ntx + tx
    order = torch.sort(tid * len(cnt) + gid).indices
    return tid[order], gid[order]


def _tiled_reference_rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                               backgrounds, tile: int = 8, tiles_per_call: int = 96):
    """Reference blending, tile by tile (the same image as the dense reference, far less work).

    The projection runs once per frame (reference ``_project``); tiles are packed as the image
    dimension of the reference ``_composite`` (each padded to its chunk's largest Gaussian count).

    means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N], colors [B,N,D], viewmats
    [B,1,4,4], Ks [B,1,3,3], backgrounds [B,1,D] -> colors [B,1,H,W,D], alphas [B,1,H,W,1].
    """
    from ffavatar_kernels.reference import rasterize as ref
    project, composite = getattr(ref, "_project", None), getattr(ref, "_composite", None)
    if project is None or composite is None:                    # fall back to the dense call
        return ref.rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                             backgrounds=backgrounds)[:2]
    B, N = means.shape[:2]
    D = colors.shape[-1]
    dev, dt = means.device, means.dtype
    radii, means2d, depths, conics, opac, ok = project(means, quats, scales, opacities, viewmats, Ks,
                                                       width, height, 0.01, 1e10, 0.3, False)
    ntx, nty = -(-width // tile), -(-height // tile)
    Wp, Hp = ntx * tile, nty * tile
    out = backgrounds[:, 0, None, None, :].expand(B, Hp, Wp, D).clone()
    alp = torch.zeros(B, Hp, Wp, 1, dtype=dt, device=dev)
    for b in range(B):
        okb = ok[b, 0]
        tid, gid = _tile_pairs(means2d[b, 0], radii[b, 0].to(dt), okb, tile, ntx, nty)
        if tid.numel() == 0:
            continue
        tiles, counts = torch.unique_consecutive(tid, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        by_size = torch.argsort(counts)
        for c0 in range(0, len(tiles), tiles_per_call):
            sel = by_size[c0:c0 + tiles_per_call]
            T, nmax = len(sel), int(counts[sel].max())
            slot = torch.arange(nmax, device=dev)
            valid = slot[None, :] < counts[sel, None]                           # [T,nmax]
            pos = (starts[sel, None] + slot[None, :]).clamp(max=len(gid) - 1)
            g = torch.where(valid, gid[pos], torch.zeros_like(pos))             # [T,nmax]
            tx, ty = tiles[sel] % ntx, tiles[sel] // ntx
            shift = torch.stack([tx * tile, ty * tile], -1).to(dt)             # [T,2]
            img, a = composite(means2d[b, 0][g] - shift[:, None, :], conics[b, 0][g], opac[b, 0][g],
                               colors[b][g], valid & okb[g], depths[b, 0][g], tile, tile,
                               backgrounds[b, 0].expand(T, D))
            for i in range(T):
                y0, x0 = int(ty[i]) * tile, int(tx[i]) * tile
                out[b, y0:y0 + tile, x0:x0 + tile] = img[i]
                alp[b, y0:y0 + tile, x0:x0 + tile] = a[i]
    return out[:, None, :height, :width], alp[:, None, :height, :width]


def render_frames(model: FlameModel, gaussians: CanonicalGaussians, betas: torch.Tensor, pose: torch.Tensor,
                  viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
                  backend: Backend | None = None, background=(0.08, 0.09, 0.11),
                  lit: bool = True, lbs_args: tuple | None = None) -> torch.Tensor:
    """Render B animation frames in one batched skinning call and one batched rasterize call.

    Args:
        model: the FLAME-structured head (on the rendering device).
        gaussians: its canonical Gaussians (same device and dtype).
        betas: [B,S] shape + expression coefficients ([B,n_expr] expression coefficients with
            ``lbs_args=model.expression_lbs_args(...)``).
        pose: [B,J*3] axis-angle or [B,J,3,3] rotations.
        viewmats: [B,4,4] world-to-camera, one camera per frame.
        Ks: [B,3,3] or [3,3] intrinsics.
        width, height: image size in pixels.
        backend: from :func:`select_backend` (default: chosen for the device).
        background: RGB background color.
        lit: shade with the camera-attached lights (else the raw albedo).
        lbs_args: the model tensors skinning uses (default ``model.lbs_args()``). For the
            expression-only fast path of a fixed avatar shape pass
            ``model.expression_lbs_args(betas_shape)`` (computed once per shape) with betas = the
            expression coefficients: the kernels then read n_expr directions instead of S. It is
            explicit because detecting a shared shape in CUDA betas would cost a host sync per call.

    Returns:
        [B,H,W,3] images in [0,1].
    """
    if betas.dim() != 2:
        raise ValueError(f"render_frames: betas expected shape [B,S], got {list(betas.shape)}")
    B = betas.shape[0]
    if viewmats.shape != (B, 4, 4):
        raise ValueError(f"render_frames: viewmats expected shape [{B},4,4], got {list(viewmats.shape)}")
    if Ks.dim() == 2:
        Ks = Ks.expand(B, 3, 3)
    if Ks.shape != (B, 3, 3):
        raise ValueError(f"render_frames: Ks expected shape [3,3] or [{B},3,3], got {list(Ks.shape)}")
    if lbs_args is None:
        lbs_args = model.lbs_args()
    elif not (isinstance(lbs_args, (tuple, list)) and len(lbs_args) == 6 and isinstance(lbs_args[1], torch.Tensor)
              and lbs_args[1].dim() == 3):
        raise TypeError("render_frames: lbs_args expected the 6-tuple of model.lbs_args() or "
                        "model.expression_lbs_args(...) (shapedirs [V,3,S] second)")
    S = lbs_args[1].shape[-1]  # shapedirs [V,3,S]
    if betas.shape[1] != S:
        raise ValueError(f"render_frames: betas expected shape [B,{S}] (the directions of lbs_args' shapedirs), "
                         f"got {list(betas.shape)}")
    dev, dt = model.device, model.dtype
    if B == 0:
        return torch.empty(0, height, width, 3, dtype=dt, device=dev)
    backend = backend or select_backend(dev)
    g = gaussians
    means, quats = backend.skin_gaussians(betas, pose, *lbs_args, g.anchor_idx, g.anchor_weights, None,
                                          g.quats)
    N = g.num_gaussians
    colors = shade(g.colors, quats, viewmats) if lit else g.colors.expand(B, N, 3)
    scales = g.scales.expand(B, N, 3).contiguous()
    opac = g.opacities.expand(B, N).contiguous()
    bg = torch.tensor(background, dtype=dt, device=dev).expand(B, 1, 3).contiguous()
    vm, K = viewmats[:, None].contiguous(), Ks[:, None].contiguous()
    if backend.tiled_reference:
        img, _ = _tiled_reference_rasterize(means, quats, scales, opac, colors.contiguous(), vm, K,
                                            width, height, bg)
    else:
        img, _, _ = backend.rasterize(means, quats, scales, opac, colors.contiguous(), vm, K, width, height,
                                      backgrounds=bg)
    return img[:, 0].clamp(0.0, 1.0)


class Animator:
    """Holds a head, its Gaussians, a camera path and a backend; renders frame batches.

    Args:
        model: FLAME-structured head (e.g. :func:`ffavatar.synthetic.synthetic_head`).
        gaussians: canonical Gaussians of ``model``.
        size: image width = height in pixels.
        device: rendering device.
        backend: default :func:`select_backend` for the device.
        fov_y_deg: vertical field of view of the camera.
        fps: frame rate the motion is timed for (passed to :func:`motion_script`).
    """

    def __init__(self, model: FlameModel, gaussians: CanonicalGaussians, size: int, device="cpu",
                 backend: Backend | None = None, fov_y_deg: float = 22.0, fps: float = 24.0):
        _check_fps(fps, "Animator")
        self.fps = float(fps)
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32)
        self.gaussians = gaussians.to(self.device, torch.float32)
        self.size = int(size)
        self.backend = backend or select_backend(self.device)
        self.K = intrinsics(self.size, self.size, fov_y_deg, device=self.device)

    def render_sequence(self, num_frames: int, batch: int = 8):
        """Yield ([b,H,W,3] float images in [0,1]) batches of the demo animation, in order.

        The arguments are checked when this is called (not at the first ``next``): ``batch`` must be
        an int >= 1 (``TypeError``/``ValueError`` naming ``batch``).
        """
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral):
            raise TypeError(f"Animator.render_sequence: batch expected an int >= 1, got {type(batch).__name__}")
        if batch < 1:
            raise ValueError(f"Animator.render_sequence: batch expected an int >= 1, got {batch}")
        betas, pose = motion_script(num_frames, self.model.n_shape, self.model.n_expr,
                                    num_joints=self.model.num_joints, fps=self.fps, device=self.device)
        return self._batches(num_frames, int(batch), betas, pose)

    def _batches(self, num_frames: int, batch: int, betas: torch.Tensor, pose: torch.Tensor):
        views = orbit(num_frames, device=self.device)
        # one avatar, one shape (motion_script keeps the shape coefficients fixed): the expression-only
        # fast path, its shaped template computed once per sequence
        if num_frames == 0:
            return
        n = self.model.n_shape
        with torch.no_grad():
            args = self.model.expression_lbs_args(betas[0, :n])
        expr = betas[:, n:].contiguous()                           # [T,n_expr]
        for s in range(0, num_frames, batch):
            e = min(num_frames, s + batch)
            with torch.no_grad():
                yield render_frames(self.model, self.gaussians, expr[s:e], pose[s:e], views[s:e], self.K,
                                    self.size, self.size, backend=self.backend, lbs_args=args)
