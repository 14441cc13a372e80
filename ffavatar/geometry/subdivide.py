"""Midpoint subdivision of a triangle mesh into anchor points (sparse combinations of base vertices).

Each level splits every triangle into four with one new vertex per edge (the edge midpoint). After
``levels`` levels every vertex of the refined mesh is a convex combination of at most ``2**levels``
base vertices; for ``levels <= 2`` that is at most 4, stored as ``anchor_idx`` [N,4] and
``anchor_weights`` [N,4] (padding: weight 0 on the first index). Skinning such a point is the same
combination of the skinned base vertices -- exact, because LBS is linear in the vertices.

Vertex order (deterministic): the V base vertices first (weight 1 on themselves), then the level-1
edge midpoints in lexicographic order of their (min, max) base-vertex pair, then the level-2
midpoints in the same order of their level-1 endpoint pair. For a mesh with V vertices, F faces and
E edges: level 1 gives V + E vertices, 4F faces and 2E + 3F edges; level 2 gives
V + E + (2E + 3F) vertices and 16F faces (FLAME: 5,023 -> 79,936 points).
"""
from __future__ import annotations

import torch

__all__ = ["subdivide", "mesh_edges", "subdivision_counts"]


def mesh_edges(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique undirected edges of a triangle mesh.

    Args:
        faces: [F,3] int64 vertex indices.

    Returns:
        edges [E,2] int64 (each row sorted, rows in lexicographic order) and face_edges [F,3]
        int64: the edge index of (v0,v1), (v1,v2), (v2,v0) of each face.
    """
    F = faces.shape[0]
    e = torch.stack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 1).reshape(-1, 2)
    e = torch.sort(e, dim=1).values
    n = int(e.max()) + 1 if e.numel() else 1
    key = e[:, 0] * n + e[:, 1]                       # 1-D keys sort like the (min, max) pairs
    ukey, inv = torch.unique(key, sorted=True, return_inverse=True)
    edges = torch.stack([ukey // n, ukey % n], 1)
    return edges, inv.reshape(F, 3)


def subdivision_counts(num_vertices: int, faces: torch.Tensor, levels: int = 2) -> tuple[int, int]:
    """(vertices, faces) after ``levels`` midpoint subdivisions, from the Euler-type counts."""
    V, F = num_vertices, faces.shape[0]
    E = mesh_edges(faces)[0].shape[0] if F else 0
    for _ in range(levels):
        V, E, F = V + E, 2 * E + 3 * F, 4 * F
    return V, F


def _combine(idx: torch.Tensor, w: torch.Tensor, k_out: int, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge duplicate indices per row of a sparse combination and compact it to ``k_out`` slots.

    idx [M,K] int64 (``sentinel`` marks padding), w [M,K] float64 -> ([M,k_out], [M,k_out]).
    """
    M, K = idx.shape
    idx = torch.where(w > 0, idx, torch.full_like(idx, sentinel))
    order = torch.argsort(idx, dim=1, stable=True)
    idx = torch.gather(idx, 1, order)
    w = torch.gather(w, 1, order)
    start = torch.ones_like(idx, dtype=torch.bool)
    start[:, 1:] = idx[:, 1:] != idx[:, :-1]
    slot = torch.cumsum(start.to(torch.int64), 1) - 1                 # [M,K] target slot per entry
    out_w = torch.zeros(M, K, dtype=w.dtype, device=w.device).scatter_add_(1, slot, w)
    out_i = torch.full((M, K), sentinel, dtype=idx.dtype, device=idx.device).scatter_(1, slot, idx)
    nnz = (out_i != sentinel).sum(1)
    if M and int(nnz.max()) > k_out:
        raise ValueError(f"subdivide: a point combines {int(nnz.max())} base vertices, more than {k_out}")
    out_i, out_w = out_i[:, :k_out], out_w[:, :k_out]
    first = out_i[:, :1].expand_as(out_i)
    out_i = torch.where(out_i == sentinel, first, out_i)              # pad with the first index
    return out_i, out_w


def subdivide(faces: torch.Tensor, num_vertices: int, levels: int = 2
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Midpoint-subdivide a triangle mesh ``levels`` times; express every point by base vertices.

    Args:
        faces: [F,3] integer vertex indices into the base mesh (any device).
        num_vertices: V, the number of base vertices (unreferenced vertices are kept as anchors).
        levels: number of subdivision levels, 0, 1 or 2 (at most 4 base vertices per point).

    Returns:
        anchor_idx [N,4] int64, anchor_weights [N,4] float32 (rows sum to 1; padding has weight 0
        and repeats the first index), faces_out [F*4**levels,3] int64 into the N points.
        The first V points are the base vertices, in order.
    """
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"subdivide: faces must be a torch.Tensor, got {type(faces).__name__}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"subdivide: faces expected shape [F,3], got {list(faces.shape)}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"subdivide: faces expected an integer dtype, got {faces.dtype}")
    if not isinstance(levels, int) or not 0 <= levels <= 2:
        raise ValueError(f"subdivide: levels must be 0, 1 or 2 (at most 4 anchors per point), got {levels}")
    V = int(num_vertices)
    if V < 0:
        raise ValueError(f"subdivide: num_vertices must be >= 0, got {num_vertices}")
    dev = faces.device
    faces = faces.to(torch.int64)
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= V):
        raise ValueError(f"subdivide: faces index vertices in [{int(faces.min())},{int(faces.max())}], "
                         f"outside [0,{V}) for num_vertices={V}")
    idx = torch.arange(V, dtype=torch.int64, device=dev)[:, None].repeat(1, 4)
    w = torch.zeros(V, 4, dtype=torch.float64, device=dev)
    w[:, 0] = 1.0
    sentinel = max(V, 1)
    for _ in range(levels):
        n = idx.shape[0]
        edges, fe = mesh_edges(faces)
        # midpoint of each edge = half of each endpoint's combination, merged
        ci = torch.cat([idx[edges[:, 0]], idx[edges[:, 1]]], 1)
        cw = 0.5 * torch.cat([w[edges[:, 0]], w[edges[:, 1]]], 1)
        mi, mw = _combine(ci, cw, 4, sentinel)
        idx = torch.cat([idx, mi], 0)
        w = torch.cat([w, mw], 0)
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        ab, bc, ca = n + fe[:, 0], n + fe[:, 1], n + fe[:, 2]
        faces = torch.stack([
            torch.stack([a, ab, ca], 1), torch.stack([ab, b, bc], 1),
            torch.stack([ca, bc, c], 1), torch.stack([ab, bc, ca], 1)], 1).reshape(-1, 3)
    return idx, w.to(torch.float32), faces
