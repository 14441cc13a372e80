"""Canonical 3D Gaussians on the twice-subdivided head surface.

Every Gaussian sits on an anchor point (a sparse combination of up to 4 base vertices, see
:mod:`ffavatar.geometry.subdivide`), is oriented along the surface tangent frame (local x, y in the tangent
plane, local z along the outward normal), is flat along the normal, and takes its color from the
vertex colors. Values are "activated": scales in meters, opacities in [0,1], colors in [0,1] -- the
form ``ffavatar_kernels.rasterize`` takes.
"""
from __future__ import annotations

import dataclasses

import torch

from ..geometry.rotations import matrix_to_quat, tangent_frames
from ..geometry.subdivide import subdivide
from .model import FlameModel

__all__ = ["CanonicalGaussians", "canonical_gaussians", "anchor_points", "vertex_normals"]


@dataclasses.dataclass
class CanonicalGaussians:
    """Gaussians anchored to a base mesh (N Gaussians, K=4 anchors each).

    Attributes:
        anchor_idx:     [N,4] int64 base-vertex indices.
        anchor_weights: [N,4] float, rows sum to 1.
        means:          [N,3] canonical positions (the anchor combination of v_template).
        quats:          [N,4] wxyz unit quaternions: columns of the rotation are (tangent,
                        bitangent, outward normal).
        scales:         [N,3] standard deviations in meters; the third (normal) axis is thin.
        opacities:      [N] in [0,1].
        colors:         [N,3] RGB in [0,1].
        faces:          [F',3] int64 triangles over the N points (the subdivided mesh).
    """

    anchor_idx: torch.Tensor
    anchor_weights: torch.Tensor
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    faces: torch.Tensor

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def to(self, device=None, dtype: "torch.dtype | None" = None) -> "CanonicalGaussians":
        """Copy to ``device``; floating tensors cast to ``dtype`` (indices stay int64)."""
        kw = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            kw[f.name] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return CanonicalGaussians(**kw)


def anchor_points(vertices: torch.Tensor, anchor_idx: torch.Tensor, anchor_weights: torch.Tensor) -> torch.Tensor:
    """Anchor combination of vertices.

    Args:
        vertices: [...,V,C] (e.g. [V,3] or [B,V,3]).
        anchor_idx: [N,K] int64.
        anchor_weights: [N,K].

    Returns:
        [...,N,C]: sum_k anchor_weights[n,k] * vertices[..., anchor_idx[n,k], :].
    """
    g = vertices[..., anchor_idx, :]                                  # [...,N,K,C]
    return (g * anchor_weights.to(vertices.dtype)[..., None]).sum(-2)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: [...,V,3].
        faces: [F,3] int64 (counter-clockwise seen from outside).

    Returns:
        [...,V,3] unit normals (zero vectors stay zero for unreferenced vertices).
    """
    a = vertices[..., faces[:, 0], :]
    b = vertices[..., faces[:, 1], :]
    c = vertices[..., faces[:, 2], :]
    fn = torch.linalg.cross(b - a, c - a)                             # [...,F,3], |fn| = 2 area
    n = torch.zeros_like(vertices)
    for k in range(3):
        n.index_add_(-2, faces[:, k], fn)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def canonical_gaussians(model: FlameModel, levels: int = 2, *, opacity: float = 0.95,
                        scale_factor: float = 0.6, normal_ratio: float = 0.15) -> CanonicalGaussians:
    """Initialise Gaussians on the ``levels``-times subdivided surface of ``model`` (its template).

    Args:
        model: the head (its v_template [V,3], faces [F,3] and optional vertex_colors [V,3]; a gray
            albedo is used when it has no colors).
        levels: subdivision levels (2 gives ~80K Gaussians for FLAME-sized meshes).
        opacity: initial opacity of every Gaussian, in (0,1].
        scale_factor: tangent standard deviation as a fraction of the mean incident edge length.
        normal_ratio: normal-axis standard deviation as a fraction of the tangent one.

    Returns:
        :class:`CanonicalGaussians` on the model's device, in its dtype.
    """
    if not 0.0 < opacity <= 1.0:
        raise ValueError(f"canonical_gaussians: opacity must be in (0,1], got {opacity}")
    if scale_factor <= 0 or normal_ratio <= 0:
        raise ValueError(f"canonical_gaussians: scale_factor and normal_ratio must be > 0, "
                         f"got {scale_factor}, {normal_ratio}")
    vt = model.v_template
    dt = vt.dtype
    idx, w, faces = subdivide(model.faces, model.num_vertices, levels)
    w = w.to(dt)
    means = anchor_points(vt, idx, w)                                 # [N,3]
    N = means.shape[0]
    # Smooth normals: the base mesh's vertex normals blended with the anchor weights (Phong-style). The
    # subdivided surface is flat over each base face, so its own normals are constant per base face
    # and the lighting showed the base mesh's rows as bands and streaks.
    normals = anchor_points(vertex_normals(vt, model.faces.long()), idx, w)
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    # orphan points (in no face) get a radial normal
    bad = normals.norm(dim=-1) < 0.5
    if bool(bad.any()):
        radial = means - means.mean(0)
        normals[bad] = radial[bad] / radial[bad].norm(dim=-1, keepdim=True).clamp_min(1e-20)
    quats = matrix_to_quat(tangent_frames(normals))
    # local spacing: mean length of the edges incident to each point
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 0)
    length = (means[e[:, 0]] - means[e[:, 1]]).norm(dim=-1)
    tot = torch.zeros(N, dtype=dt, device=vt.device).index_add_(0, e[:, 0], length).index_add_(0, e[:, 1], length)
    cnt = torch.zeros(N, dtype=dt, device=vt.device).index_add_(0, e[:, 0], torch.ones_like(length)) \
        .index_add_(0, e[:, 1], torch.ones_like(length))
    spacing = tot / cnt.clamp_min(1)
    spacing = torch.where(cnt > 0, spacing, spacing[cnt > 0].median() if bool((cnt > 0).any()) else torch.ones_like(spacing) * 1e-3)
    s = scale_factor * spacing
    scales = torch.stack([s, s, normal_ratio * s], -1)
    if model.vertex_colors is not None:
        colors = anchor_points(model.vertex_colors, idx, w).clamp(0, 1)
    else:
        colors = torch.full((N, 3), 0.7, dtype=dt, device=vt.device)
    opac = torch.full((N,), float(opacity), dtype=dt, device=vt.device)
    return CanonicalGaussians(anchor_idx=idx, anchor_weights=w, means=means, quats=quats, scales=scales,
                              opacities=opac, colors=colors, faces=faces)
