"""The procedural synthetic head: FLAME structure, rig behaviour, determinism, smoothness."""
import numpy as np
import pytest
import torch

from ffavatar.flame.synthetic import synthetic_head, synthetic_layout, build_layout


def _rodrigues(r):
    th = r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = r / th
    K = torch.zeros(r.shape[:-1] + (3, 3), dtype=r.dtype)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 0] = -k[..., 2], k[..., 1], k[..., 2]
    K[..., 1, 2], K[..., 2, 0], K[..., 2, 1] = -k[..., 0], -k[..., 1], k[..., 0]
    s, c = torch.sin(th)[..., None], torch.cos(th)[..., None]
    return torch.eye(3, dtype=r.dtype) + s * K + (1 - c) * K @ K


def _lbs(m, betas, pose):
    """Small float64 smplx-style LBS (test-local; the kernels have their own reference)."""
    v = m.v_template + torch.einsum("vcs,s->vc", m.shapedirs, betas)
    J = m.J_regressor @ v
    R = _rodrigues(pose.reshape(-1, 3))
    feat = (R[1:] - torch.eye(3, dtype=v.dtype)).reshape(-1)
    v = v + (feat @ m.posedirs).reshape(-1, 3)
    G = []
    for j, p in enumerate(m.parents.tolist()):
        T = torch.eye(4, dtype=v.dtype)
        T[:3, :3] = R[j]
        T[:3, 3] = J[j] - (J[p] if p >= 0 else 0)
        G.append(T if p < 0 else G[p] @ T)
    A = torch.stack(G)
    A[:, :3, 3] -= (A[:, :3, :3] @ J[:, :, None])[..., 0]
    Tv = torch.einsum("vj,jab->vab", m.lbs_weights, A)
    return (Tv[:, :3, :3] @ v[:, :, None])[..., 0] + Tv[:, :3, 3]


@pytest.fixture(scope="module")
def head():
    return synthetic_head(dtype=torch.float64), synthetic_layout()


def test_structure(head):
    m, _ = head
    V = 5023
    assert m.v_template.shape == (V, 3) and m.shapedirs.shape == (V, 3, 400)
    assert m.posedirs.shape == (36, V * 3) and m.J_regressor.shape == (5, V)
    assert m.lbs_weights.shape == (V, 5) and m.parents.tolist() == [-1, 0, 1, 1, 1]
    assert (m.n_shape, m.n_expr) == (300, 100) and m.faces.dtype == torch.int64
    assert int(m.faces.min()) >= 0 and int(m.faces.max()) < V
    assert torch.unique(m.faces.reshape(-1)).numel() == V          # every vertex is in a face
    torch.testing.assert_close(m.lbs_weights.sum(1), torch.ones(V, dtype=torch.float64))
    assert float(m.lbs_weights.min()) >= 0
    torch.testing.assert_close(m.J_regressor.sum(1), torch.ones(5, dtype=torch.float64))
    assert torch.isfinite(m.shapedirs).all() and torch.isfinite(m.posedirs).all()
    vc = m.vertex_colors
    assert vc.shape == (V, 3) and float(vc.min()) >= 0 and float(vc.max()) <= 1
    assert len(torch.unique((vc * 20).round(), dim=0)) > 10        # skin, lips, hair, eyes, ...


def test_joints_anatomical(head):
    m, _ = head
    J = (m.J_regressor @ m.v_template).numpy()
    root, neck, jaw, leye, reye = J
    assert root[1] < neck[1] < jaw[1] < leye[1]
    assert leye[0] > 0.02 and reye[0] < -0.02 and abs(leye[1] - reye[1]) < 1e-9
    assert leye[2] > jaw[2] + 0.03                                  # eyes in front of the jaw hinge
    assert abs(jaw[0]) < 1e-9 and abs(neck[0]) < 1e-9


def test_deterministic():
    a, b = synthetic_head(), synthetic_head()
    assert a.shapedirs is not b.shapedirs
    for name in ("v_template", "shapedirs", "posedirs", "lbs_weights", "vertex_colors"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert np.array_equal(build_layout().verts, synthetic_layout().verts)


def test_jaw_opens_mouth(head):
    m, lay = head
    upper = torch.from_numpy(lay.lip_side > 0)
    lower = torch.from_numpy(lay.lip_side < 0)
    betas = torch.zeros(400, dtype=torch.float64)
    pose = torch.zeros(15, dtype=torch.float64)
    v0 = _lbs(m, betas, pose)
    gap0 = (v0[upper, 1].mean() - v0[lower, 1].mean()).item()
    assert abs(gap0) < 1e-9                                          # closed at rest
    pose[6] = 0.3 * torch.rand(()).item() + 0.15                     # jaw about x: open
    v1 = _lbs(m, betas, pose)
    gap = (v1[upper, 1].mean() - v1[lower, 1].mean()).item()
    assert gap > 0.008                                               # lips apart by more than 8 mm
    eyes = torch.from_numpy(np.isin(lay.part, (4, 5)))
    torch.testing.assert_close(v1[eyes], v0[eyes])                   # the eyes stay put


def test_eye_rotation_moves_only_eyeballs(head):
    m, lay = head
    betas = torch.zeros(400, dtype=torch.float64)
    pose = torch.zeros(15, dtype=torch.float64)
    v0 = _lbs(m, betas, pose)
    pose[9:12] = (torch.rand(3, dtype=torch.float64) - 0.5) * 0.6     # left eye
    pose[12:15] = (torch.rand(3, dtype=torch.float64) - 0.5) * 0.6    # right eye
    v1 = _lbs(m, betas, pose)
    moved = (v1 - v0).norm(dim=1) > 1e-12
    eyes = torch.from_numpy(np.isin(lay.part, (4, 5)))
    assert moved[eyes].float().mean() > 0.9 and not moved[~eyes].any()
    # rigid: distances to the eye joint are preserved
    J = m.J_regressor @ m.v_template
    for k, p in ((3, 4), (4, 5)):
        sel = torch.from_numpy(lay.part == p)
        torch.testing.assert_close((v1[sel] - J[k]).norm(dim=1), (v0[sel] - J[k]).norm(dim=1))


def test_neck_bends_head(head):
    m, lay = head
    pose = torch.zeros(15, dtype=torch.float64)
    pose[3] = 0.3                                                    # nod
    v0 = _lbs(m, torch.zeros(400, dtype=torch.float64), torch.zeros(15, dtype=torch.float64))
    v1 = _lbs(m, torch.zeros(400, dtype=torch.float64), pose)
    d = (v1 - v0).norm(dim=1)
    top = torch.from_numpy(lay.part == 1)
    bottom = torch.from_numpy(lay.part == 2)
    assert d[top].item() > 0.02 and d[bottom].item() < 1e-9


def test_blendshapes_smooth_and_localized(head):
    m, lay = head
    f = m.faces
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    elen = (m.v_template[edges[:, 0]] - m.v_template[edges[:, 1]]).norm(dim=1)
    eyes = torch.from_numpy(np.isin(lay.part, (4, 5)))
    skin_e = ~(eyes[edges[:, 0]] | eyes[edges[:, 1]])
    for k in list(range(0, 300, 37)) + list(range(300, 400, 13)):
        d = m.shapedirs[:, :, k]
        mag = d.norm(dim=1).max()
        assert mag > 0
        # neighbouring vertices move alike: displacement difference per edge << edge length * scale
        dd = (d[edges[:, 0]] - d[edges[:, 1]]).norm(dim=1)[skin_e]
        assert (dd / elen[skin_e]).quantile(0.99) < 8 * mag / 0.05, k
        if k >= 300:
            moving = d.norm(dim=1) > 0.05 * mag
            assert moving.float().mean() < 0.35, k                     # expressions are local
            assert d[eyes].abs().max() == 0                            # eyeballs are rigid
    # shape components are orthogonal with decaying variance
    sd = m.shapedirs[:, :, :300].reshape(-1, 300)
    G = sd.T @ sd
    off = G - torch.diag(torch.diag(G))
    assert off.abs().max() < 1e-8 and torch.all(torch.diff(torch.diag(G)) <= 1e-12)


def test_pose_correctives(head):
    m, _ = head
    P = m.posedirs.reshape(4, 9, -1)
    assert P[0].abs().max() > 0 and P[1].abs().max() > 0               # neck, jaw
    assert P[2].abs().max() == 0 and P[3].abs().max() == 0             # eyes: rigid
