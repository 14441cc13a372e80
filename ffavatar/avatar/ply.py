"""Splat files: the standard 3D Gaussian Splatting ``.ply`` (Inria's layout), which gsplat,
SuperSplat and other viewers open as any 3DGS scene.

One ``vertex`` element, binary little-endian, float32 properties in this order:
``x, y, z, nx, ny, nz, f_dc_0, f_dc_1, f_dc_2, [f_rest_*], opacity, scale_0, scale_1, scale_2,
rot_0, rot_1, rot_2, rot_3``. Conventions (what every 3DGS reader applies):

- ``opacity`` is a logit: opacity = sigmoid(value);
- ``scale_*`` are logs of the standard deviations (metres): scale = exp(value);
- ``f_dc_*`` is the degree-0 spherical-harmonics coefficient: colour = 0.5 + C0 * f_dc with
  C0 = 0.28209479177387814, i.e. f_dc = (rgb - 0.5) / C0; we write no ``f_rest_*`` (degree 0);
- ``rot_*`` is a unit quaternion w, x, y, z; ``nx, ny, nz`` are zeros (unused by 3DGS).

Opacities are clamped to [1e-6, 1 - 1e-6] before the logit (so 0 and 1 stay finite) and scales to
>= 1e-12 before the log. Files are written atomically.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

import numpy as np
import torch

from ..flame import FlameModel
from ..flame.atomic import atomic_write

__all__ = ["SH_C0", "PlyFileError", "SplatGaussians", "write_ply", "load_ply", "export_avatar_ply"]

SH_C0 = 0.28209479177387814
_OPACITY_EPS = 1e-6
_PROPS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
          "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


class PlyFileError(ValueError):
    """A splat .ply file is missing, unreadable or lacks the 3DGS properties (names the file)."""


@dataclasses.dataclass
class SplatGaussians:
    """Gaussians of a 3DGS .ply, activated (N Gaussians).

    Attributes:
        means [N,3]; quats [N,4] unit wxyz; scales [N,3] metres; opacities [N] in (0,1);
        colors [N,3] = 0.5 + C0 * f_dc (not clamped); sh_rest: optional [N,M,3] higher-degree SH
        coefficients (M = (degree+1)^2 - 1) as stored.
    """
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    sh_rest: Optional[torch.Tensor] = None

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]


def write_ply(path: "str | os.PathLike", means, quats, scales, opacities, colors) -> None:
    """Write activated Gaussians (means [N,3], quats [N,4] wxyz, scales [N,3], opacities [N] in
    [0,1], colors [N,3] RGB) as a 3DGS .ply (conventions in the module docstring)."""
    from plyfile import PlyData, PlyElement

    def arr(t, name, shape):
        a = t.detach().to("cpu", torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)
        if a.shape != shape:
            raise ValueError(f"write_ply: {name} expected shape {list(shape)}, got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise ValueError(f"write_ply: {name} has non-finite values")
        return a

    N = int(means.shape[0]) if hasattr(means, "shape") and len(means.shape) else -1
    m = arr(means, "means", (N, 3))
    q = arr(quats, "quats", (N, 4))
    s = arr(scales, "scales", (N, 3))
    o = arr(opacities, "opacities", (N,))
    c = arr(colors, "colors", (N, 3))
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    o = np.clip(o, _OPACITY_EPS, 1 - _OPACITY_EPS)
    cols = [m, np.zeros((N, 3)), (c - 0.5) / SH_C0, np.log(o / (1 - o))[:, None], np.log(np.maximum(s, 1e-12)), q]
    flat = np.concatenate(cols, 1).astype("<f4")
    rec = np.empty(N, dtype=[(p, "<f4") for p in _PROPS])
    for i, p in enumerate(_PROPS):
        rec[p] = flat[:, i]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(rec, "vertex")], text=False, byte_order="<").write(buf)
    atomic_write(path, buf.getvalue(), error=PlyFileError)


def load_ply(path: "str | os.PathLike", dtype=torch.float32) -> SplatGaussians:
    """Read a 3DGS .ply (ours or any 3DGS trainer's) into activated :class:`SplatGaussians`.

    Raises:
        PlyFileError: no such file, not a readable .ply, no ``vertex`` element, or missing properties.
    """
    from plyfile import PlyData
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PlyFileError(f"{path}: no such file")
    try:
        ply = PlyData.read(path)
        v = ply["vertex"].data
    except KeyError:
        raise PlyFileError(f"{path}: no 'vertex' element, not a 3DGS splat file") from None
    except Exception as exc:  # plyfile raises its own and numpy errors for bad files
        raise PlyFileError(f"{path}: not a readable .ply file ({type(exc).__name__}: {exc})") from None
    names = v.dtype.names or ()
    missing = [p for p in _PROPS if p not in names and p not in ("nx", "ny", "nz")]
    if missing:
        raise PlyFileError(f"{path}: missing 3DGS vertex properties {missing}")

    def col(*props):
        return np.stack([np.asarray(v[p], np.float64) for p in props], -1)

    rest = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]))
    sh_rest = None
    if rest:
        if len(rest) % 3:
            raise PlyFileError(f"{path}: {len(rest)} f_rest properties, expected a multiple of 3")
        sh_rest = col(*rest).reshape(len(v), 3, len(rest) // 3).transpose(0, 2, 1)   # [N,M,3] (stored per channel)
    q = col("rot_0", "rot_1", "rot_2", "rot_3")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    return SplatGaussians(means=t(col("x", "y", "z")), quats=t(q), scales=t(np.exp(col("scale_0", "scale_1", "scale_2"))),
                          opacities=t(1 / (1 + np.exp(-np.asarray(v["opacity"], np.float64)))),
                          colors=t(0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2")),
                          sh_rest=None if sh_rest is None else t(sh_rest))


def export_avatar_ply(avatar, path, expression=None, pose=None, model: Optional[FlameModel] = None, *,
                      translation=None) -> None:
    """:meth:`Avatar.export_ply`: the canonical frame, or one posed frame (skinned with ``model``).

    Canonical frame: with ``model``, the anchor points of the shaped template + offsets (exactly
    what :meth:`Avatar.render` shows at zero expression and pose); without one, the stored
    ``means`` + residual offsets. Residuals are applied in both frames.
    """
    g = avatar.effective()
    posed = expression is not None or pose is not None or translation is not None
    if posed:
        if model is None:
            raise ValueError("export_ply: a posed frame (expression / pose / translation) needs the FlameModel")
        with torch.no_grad():
            means, quats = avatar.posed(expression, pose, model, translation=translation)
        if means.shape[0] != 1:
            raise ValueError(f"export_ply: one frame per file, got {means.shape[0]} frames")
        means, quats = means[0], quats[0]
    elif model is not None:
        with torch.no_grad():
            means, quats = avatar.posed(None, None, model)
        means, quats = means[0], quats[0]
    else:
        means = avatar.means + (avatar.residuals.offsets if avatar.residuals is not None else 0)
        quats = g.quats
    write_ply(path, means, quats, g.scales, g.opacities, g.colors)
