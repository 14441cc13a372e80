"""Midpoint subdivision, canonical Gaussians and cameras."""
import math

import pytest
import torch

from ffavatar.geometry.cameras import intrinsics, look_at, orbit
from ffavatar.flame.gaussians import anchor_points, canonical_gaussians
from ffavatar.geometry.rotations import quat_to_matrix
from ffavatar.geometry.subdivide import mesh_edges, subdivide, subdivision_counts
from ffavatar.flame.synthetic import synthetic_head


def _grid(n):
    """Random-height n x n vertex grid triangulated, with a random vertex permutation."""
    V = n * n
    g = torch.arange(V).reshape(n, n)
    a, b, c, d = g[:-1, :-1].reshape(-1), g[:-1, 1:].reshape(-1), g[1:, :-1].reshape(-1), g[1:, 1:].reshape(-1)
    faces = torch.cat([torch.stack([a, c, b], 1), torch.stack([b, c, d], 1)])
    perm = torch.randperm(V)
    return perm[faces], V


def _naive(faces, verts):
    """Loop-based reference subdivision of actual positions."""
    v = [p for p in verts]
    out = []
    cache = {}
    def mid(i, j):
        key = (min(i, j), max(i, j))
        if key not in cache:
            cache[key] = len(v)
            v.append(0.5 * (v[i] + v[j]))
        return cache[key]
    for a, b, c in faces.tolist():
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        out += [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]
    return torch.stack(v), torch.tensor(out)


@pytest.mark.parametrize("levels", [0, 1, 2])
def test_counts_weights_midpoints(levels):
    faces, V = _grid(int(torch.randint(3, 7, ())))
    verts = torch.randn(V, 3, dtype=torch.float64)
    idx, w, fo = subdivide(faces, V, levels)
    F, E = faces.shape[0], mesh_edges(faces)[0].shape[0]
    n_exp = {0: V, 1: V + E, 2: V + E + 2 * E + 3 * F}[levels]
    assert idx.shape == (n_exp, 4) and w.shape == (n_exp, 4) and fo.shape == (F * 4 ** levels, 3)
    assert (n_exp, F * 4 ** levels) == subdivision_counts(V, faces, levels)
    assert idx.dtype == torch.int64 and w.dtype == torch.float32 and fo.dtype == torch.int64
    torch.testing.assert_close(w.sum(1), torch.ones(n_exp))
    assert (w >= 0).all() and int(idx.max()) < V and int(idx.min()) >= 0
    assert torch.equal(idx[:V, 0], torch.arange(V)) and (w[:V, 0] == 1).all()
    assert ((w > 0).sum(1) <= 2 ** levels).all()
    # positions reproduce the loop-based midpoint subdivision exactly (same vertex set and faces)
    pts = anchor_points(verts, idx, w.double())
    ref_v, ref_f = verts, faces
    for _ in range(levels):
        ref_v, ref_f = _naive(ref_f, ref_v)
    key = lambda P, Fc: torch.sort(P[Fc].reshape(len(Fc), -1).round(decimals=9), dim=0).values
    assert pts.shape == ref_v.shape
    torch.testing.assert_close(key(pts, fo), key(ref_v, ref_f), rtol=0, atol=1e-8)
    # level-1 points are the exact edge midpoints, in (min,max) edge order
    if levels >= 1:
        edges = mesh_edges(faces)[0]
        torch.testing.assert_close(pts[V:V + E], 0.5 * (verts[edges[:, 0]] + verts[edges[:, 1]]), rtol=0, atol=1e-12)


def test_deterministic_and_head_size():
    m = synthetic_head()
    a = subdivide(m.faces, m.num_vertices)
    b = subdivide(m.faces, m.num_vertices)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert 75_000 < a[0].shape[0] < 85_000


def test_bad_inputs_and_empty():
    with pytest.raises(ValueError, match="faces expected shape"):
        subdivide(torch.zeros(4, 4, dtype=torch.int64), 4)
    with pytest.raises(TypeError, match="integer dtype"):
        subdivide(torch.zeros(4, 3), 4)
    with pytest.raises(ValueError, match="levels"):
        subdivide(torch.zeros(1, 3, dtype=torch.int64), 4, 3)
    with pytest.raises(ValueError, match="outside"):
        subdivide(torch.tensor([[0, 1, 7]]), 4)
    idx, w, f = subdivide(torch.zeros(0, 3, dtype=torch.int64), 5)
    assert idx.shape == (5, 4) and f.shape == (0, 3)


def test_canonical_gaussians():
    m = synthetic_head()
    g = canonical_gaussians(m)
    N = g.num_gaussians
    for t in (g.means, g.quats, g.scales, g.opacities, g.colors):
        assert torch.isfinite(t).all() and t.shape[0] == N
    torch.testing.assert_close(g.means, anchor_points(m.v_template, g.anchor_idx, g.anchor_weights))
    torch.testing.assert_close(g.quats.norm(dim=1), torch.ones(N))
    assert (g.scales > 0).all() and (g.scales[:, 2] < 0.5 * g.scales[:, 0]).all()
    assert float(g.colors.min()) >= 0 and float(g.colors.max()) <= 1
    # on the surface: each mean lies on a subdivided face; normals are perpendicular to face edges
    R = quat_to_matrix(g.quats)
    f = g.faces
    e = g.means[f[:, 1]] - g.means[f[:, 0]]
    cos = (R[f[:, 0], :, 2] * e).sum(1) / e.norm(dim=1)
    assert cos.abs().median() < 0.1
    # outward: normals of the base vertices point away from the head center on the skull
    c = m.v_template.mean(0)
    assert ((R[:4400, :, 2] * (g.means[:4400] - c)).sum(1) > 0).float().mean() > 0.95
    # scales follow the local spacing: Gaussians of a face are about as large as its edges
    assert 0.2 < (g.scales[f[:, 0], 0] / e.norm(dim=1)).median() < 2



def test_canonical_normals_are_smooth():
    """The normal axes interpolate the base mesh's vertex normals: at the base vertices they are those
    normals, and across the subdivided faces they turn gradually (the subdivided surface is flat per
    base face, so its own facet normals would jump at every base edge and light the head in bands)."""
    from ffavatar.flame.gaussians import vertex_normals
    m = synthetic_head()
    g = canonical_gaussians(m)
    n = quat_to_matrix(g.quats)[:, :, 2]
    V = m.num_vertices
    vn = vertex_normals(m.v_template, m.faces.long())
    ok = vn.norm(dim=1) > 0.5
    assert ((n[:V][ok] * vn[ok]).sum(1) > 1 - 1e-4).all()
    # adjacent Gaussians: the angle between their normals is small everywhere but at creases
    f = g.faces
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    ang = torch.rad2deg(torch.arccos((n[edges[:, 0]] * n[edges[:, 1]]).sum(1).clamp(-1, 1)))
    flat = vertex_normals(g.means, f)            # the subdivided surface's own normals (facet-like)
    ang_flat = torch.rad2deg(torch.arccos((flat[edges[:, 0]] * flat[edges[:, 1]]).sum(1).clamp(-1, 1)))
    # facet normals: neighbours inside a base face are parallel (a third of all pairs); smooth ones
    # turn between any two neighbours
    assert (ang_flat < 0.05).float().mean() > 0.25
    assert (ang < 0.05).float().mean() < 0.1


def test_cameras():
    eye = torch.randn(5, 3, dtype=torch.float64) + torch.tensor([0, 0, 3.0], dtype=torch.float64)
    tgt = torch.randn(5, 3, dtype=torch.float64) * 0.1
    M = look_at(eye, tgt)
    Rm = M[:, :3, :3]
    torch.testing.assert_close(Rm @ Rm.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    ph = lambda p: (M[:, :3, :3] @ p[..., None])[..., 0] + M[:, :3, 3]
    torch.testing.assert_close(ph(eye), torch.zeros(5, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    t_c = ph(tgt)
    assert (t_c[:, 2] > 0).all() and t_c[:, :2].abs().max() < 1e-9
    up_c = ph(eye + torch.tensor([0, 1.0, 0], dtype=torch.float64)) # world up appears as -y (image up)
    assert (up_c[:, 1] < 0).all()
    K = intrinsics(64, 48, 60.0)
    assert K[0, 2] == 32 and K[1, 2] == 24 and abs(float(K[1, 1]) - 24 / math.tan(math.radians(30))) < 1e-3
    assert orbit(7).shape == (7, 4, 4) and orbit(0).shape == (0, 4, 4)
