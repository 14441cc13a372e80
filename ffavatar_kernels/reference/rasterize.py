"""Reference twin of :func:`ffavatar_kernels.rasterize`: dense, differentiable PyTorch.

Same signature and conventions (gsplat 1.5.3) as the compiled op: EWA projection with the 1.3x-fov
clamp, eps2d low-pass, antialiased compensation, opacity-aware per-axis radii, off-image culling;
every pixel evaluates every visible Gaussian in depth order, with gsplat's blending rule (skip alpha
< 1/255, clamp at 0.999, stop before the Gaussian that takes T to <= 1e-4). Memory is
O(images x pixels x Gaussians): a reference for small scenes, not a renderer. Any device, any
floating dtype (pass float64 for a high-precision reference).
"""
from __future__ import annotations

import math

import torch

from .rotations import quat_to_matrix

_ALPHA_T = 1.0 / 255.0
_T_EPS = 1e-4  # a pixel stops before the Gaussian that takes its transmittance to <= this


def _project(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased):
    """Batched projection. means [B,N,3] ... viewmats [B,C,4,4] -> per [B,C,N] quantities."""
    Rv = viewmats[..., :3, :3]                                       # [B,C,3,3]
    tv = viewmats[..., :3, 3]                                        # [B,C,3]
    p = torch.einsum("bcij,bnj->bcni", Rv, means) + tv[:, :, None]   # [B,C,N,3]
    R = quat_to_matrix(quats)                                       # [B,N,3,3]
    M = R * scales[..., None, :]
    cov = M @ M.transpose(-1, -2)                                    # [B,N,3,3]
    cov_c = torch.einsum("bcij,bnjk,bclk->bcnil", Rv, cov, Rv)       # [B,C,N,3,3]
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]               # [B,C,1]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    x, y, z = p.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    zs = torch.where(in_depth, z, torch.ones_like(z))                # safe depth for invalid pairs
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    ux = torch.minimum(lim_xp, torch.maximum(-lim_xn, x / zs))
    uy = torch.minimum(lim_yp, torch.maximum(-lim_yn, y / zs))
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * ux / zs, zero, fy / zs, -fy * uy / zs], -1)
    J = J.reshape(zs.shape + (2, 3))                                 # [B,C,N,2,3]
    cov2d = J @ cov_c @ J.transpose(-1, -2)                          # [B,C,N,2,2]
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    comp = torch.sqrt(torch.clamp(torch.where(ok, det_orig / det_s, torch.ones_like(det)), min=0.0))
    op = opacities[:, None, :].expand_as(z)
    op_eff = op * comp if antialiased else op
    ok = ok & (op_eff >= _ALPHA_T) & (op_eff < float("inf"))      # opacity +inf: culled (as the kernels)
    with torch.no_grad():
        op_s = torch.where(ok, op_eff, torch.ones_like(op_eff))
        extent = torch.clamp(torch.sqrt(2.0 * torch.log(op_s / _ALPHA_T)), max=3.33)
        rx = torch.ceil(extent * torch.sqrt(torch.where(ok, a, torch.ones_like(a))))
        ry = torch.ceil(extent * torch.sqrt(torch.where(ok, c, torch.ones_like(c))))
    mx = fx * x / zs + cx
    my = fy * y / zs + cy
    with torch.no_grad():
        ok = ok & ((rx > 0) | (ry > 0))
        ok = ok & ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
    conic = torch.stack([c / det_s, -b / det_s, a / det_s], -1)
    okf = ok.to(means.dtype)
    radii = torch.stack([rx, ry], -1).to(torch.int32) * ok[..., None].to(torch.int32)
    means2d = torch.stack([mx, my], -1) * okf[..., None]
    return radii, means2d, z * okf, conic * okf[..., None], op_eff * okf, ok


def _composite(means2d, conics, opac, colors, ok, depths, width, height, backgrounds):
    """Dense front-to-back blending. [M,N,...] inputs, colors [M,N,D] -> [M,H,W,D], [M,H,W,1]."""
    Mi, N, _ = means2d.shape
    dev, dt = means2d.device, means2d.dtype
    ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dt) + 0.5,
                            torch.arange(width, device=dev, dtype=dt) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)          # [P,2]
    # depth order per image (stable: ties keep Gaussian order); invalid ones go last
    key = torch.where(ok, depths, torch.full_like(depths, float("inf")))
    order = torch.sort(key, dim=-1, stable=True).indices             # [M,N]
    g = lambda t: torch.gather(t, 1, order.reshape(order.shape + (1,) * (t.dim() - 2)).expand_as(t))
    m2, cn, op, col, okk = g(means2d), g(conics), g(opac), g(colors), g(ok)
    d = m2[:, None, :, :] - pix[None, :, None, :]                    # [M,P,N,2]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (cn[:, None, :, 0] * dx * dx + cn[:, None, :, 2] * dy * dy) + cn[:, None, :, 1] * dx * dy
    alpha = torch.clamp(op[:, None, :] * torch.exp(-sigma), max=0.999)
    use = okk[:, None, :] & (sigma >= 0) & (alpha >= _ALPHA_T)
    a = torch.where(use, alpha, torch.zeros_like(alpha))             # [M,P,N]
    next_t = torch.cumprod(1 - a, dim=-1)
    included = next_t > _T_EPS
    a = a * included.to(dt)
    t_excl = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1 - a[..., :-1]], -1), dim=-1)
    w = a * t_excl
    t_final = torch.prod(1 - a, dim=-1)                              # [M,P]
    out = torch.einsum("mpn,mnd->mpd", w, col)
    if backgrounds is not None:
        out = out + t_final[..., None] * backgrounds[:, None, :]
    D = colors.shape[-1]
    return out.reshape(Mi, height, width, D), (1 - t_final).reshape(Mi, height, width, 1)


def rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane=0.01,
              far_plane=1e10, eps2d=0.3, render_mode="RGB", rasterize_mode="classic", backgrounds=None,
              tile_size=16):
    """Reference rasterizer; see :func:`ffavatar_kernels.rasterize` for the contract.

    means [N,3] or [B,N,3]; quats [N,4] or [B,N,4] (wxyz); scales [N,3] or [B,N,3]; opacities [N] or
    [B,N]; colors [N,D] or [C,N,D] (batched [B,N,D] or [B,C,N,D]); viewmats [C,4,4] or [B,C,4,4];
    Ks [C,3,3] or [B,C,3,3]; backgrounds [C,D'] or [B,C,D'].
    Returns (render_colors [...,C,H,W,D'], render_alphas [...,C,H,W,1], meta) with meta holding
    radii, means2d, depths, conics, opacities, visibility. ``tile_size`` is accepted for signature
    parity (the reference is dense).
    """
    batched = means.dim() == 3
    if not batched:
        means, quats, scales, opacities = means[None], quats[None], scales[None], opacities[None]
        viewmats, Ks = viewmats[None], Ks[None]
        colors = colors[None, None] if colors.dim() == 2 else colors[None]
        if backgrounds is not None:
            backgrounds = backgrounds[None]
    elif colors.dim() == 3:
        colors = colors[:, None]
    B, N = means.shape[:2]
    C = viewmats.shape[1]
    radii, means2d, depths, conics, opac, ok = _project(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
        rasterize_mode == "antialiased")
    if render_mode == "RGB":
        cols = colors.expand(B, C, N, colors.shape[-1])
    elif render_mode == "ED":
        cols = depths[..., None]
    elif render_mode == "RGB+ED":
        cols = torch.cat([colors.expand(B, C, N, colors.shape[-1]), depths[..., None]], -1)
    else:
        raise ValueError(f"render_mode: expected 'RGB', 'ED' or 'RGB+ED', got {render_mode!r}")
    Dp = cols.shape[-1]
    if backgrounds is not None and backgrounds.shape[-1] != Dp:  # gsplat's form: colour channels only
        z = backgrounds.new_zeros(backgrounds.shape[:-1] + (1,))
        backgrounds = z if render_mode == "ED" else torch.cat([backgrounds, z], -1)
    bg_depth = None
    if backgrounds is not None and render_mode in ("ED", "RGB+ED"):
        bg_depth = backgrounds[..., -1:].reshape(B, C, 1, 1, 1)  # filled in after normalization
        backgrounds = torch.cat([backgrounds[..., :-1], torch.zeros_like(backgrounds[..., -1:])], -1)
    bg = None if backgrounds is None else backgrounds.reshape(B * C, Dp)
    img, alpha = _composite(means2d.reshape(B * C, N, 2), conics.reshape(B * C, N, 3), opac.reshape(B * C, N),
                            cols.reshape(B * C, N, Dp), ok.reshape(B * C, N), depths.reshape(B * C, N),
                            width, height, bg)
    img = img.reshape(B, C, height, width, Dp)
    alpha = alpha.reshape(B, C, height, width, 1)
    if render_mode in ("ED", "RGB+ED"):
        depth = img[..., -1:] / alpha.clamp(min=1e-10)  # expected depth of the Gaussians
        if bg_depth is not None:  # the depth background fills the transmittance left over
            depth = depth + (1 - alpha) * bg_depth
        img = torch.cat([img[..., :-1], depth], -1)
    meta = dict(radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=opac,
                visibility=(radii > 0).any(-1), width=width, height=height, tile_size=tile_size, n_cameras=C)
    if not batched:
        img, alpha = img[0], alpha[0]
        meta = {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in meta.items()}
    return img, alpha, meta


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


def rasterize_tiled(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                    tile: int = 8, tiles_per_call: int = 96):
    """The reference blending, tile by tile: the same image as :func:`rasterize`, with work
    proportional to the actual overlap (the dense reference blends pixels x Gaussians).

    The projection runs once per frame (``_project``); tiles are packed as the image dimension of
    ``_composite`` (each padded to its chunk's largest Gaussian count). Forward only in practice
    (differentiable, but the per-tile Python loop makes it slow for training).

    Args:
        means [B,N,3], quats [B,N,4], scales [B,N,3], opacities [B,N], colors [B,N,D],
        viewmats [B,1,4,4], Ks [B,1,3,3], backgrounds [B,1,D] (one camera per scene).

    Returns:
        colors [B,1,H,W,D], alphas [B,1,H,W,1].
    """
    project, composite = _project, _composite
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
