"""Rig of the synthetic head: skinning weights, joint regressor, blendshapes, pose correctives.

All functions take the :class:`ffavatar.flame.synthetic.layout.HeadLayout` (numpy float64) and are deterministic.
"""
from __future__ import annotations

import numpy as np

from . import layout as S
from .colors import vertex_colors

N_SHAPE, N_EXPR = 300, 100


_ss, _g = S._smoothstep, S._g   # the layout's smoothstep and Gaussian bump


# ---------------------------------------------------------------------------------------------
# skinning weights and joints
# ---------------------------------------------------------------------------------------------
def jaw_weight(lay: S.HeadLayout) -> np.ndarray:
    """[V] jaw weight of skin and cavity vertices: the lower face below the mouth line."""
    v = lay.verts
    V = len(v)
    w = np.zeros(V)
    skin = np.isin(lay.part, (0, 3))
    below = skin & (lay.row > lay.mouth_row)
    u = np.abs(np.nan_to_num(lay.u))
    lateral = 1.0 - _ss(0.55, 1.45, u)                    # full in front, none at the ears / back
    # fade out from the chin into the under-chin and the neck
    down = 1.0 - _ss(-0.135, -0.165, v[:, 1]) * 0 - _ss(0.0, 1.0, (v[:, 2] < 0.035) * (lay.mouth_y - 0.04 - v[:, 1]) / 0.03)
    w[below] = (lateral * np.clip(down, 0, 1))[below]
    # Beside the mouth slit the lower face is not cut from the upper one: there the weight rises
    # smoothly over 3 cm below the mouth line, so opening the jaw stretches the cheeks beside the
    # corners evenly instead of tearing the rows at the mouth's height apart (which showed as dark
    # stripes at the corners in profile). Between the corners the split stays sharp (the lips part).
    corner = np.abs(v[lay.lip_side != 0, 0]).max()
    side = _ss(corner - 0.012, corner + 0.008, np.abs(v[:, 0]))              # 0 mid-slit, 1 beside it
    soft = lateral * np.clip(down, 0, 1) * _ss(lay.mouth_y + 0.002, lay.mouth_y - 0.03, v[:, 1])
    w[skin] = ((1 - side) * w + side * soft)[skin]
    cav = lay.part == 6
    w[cav] = _ss(0.25, 0.6, lay.cavity_t[cav])
    return w


def skinning(lay: S.HeadLayout) -> np.ndarray:
    """[V,5] LBS weights: root/neck blend along the neck, jaw on the lower face, eyes rigid."""
    v = lay.verts
    V = len(v)
    W = np.zeros((V, 5))
    y = v[:, 1]
    root = _ss(S.JOINT_NECK[1] - 0.005, S.JOINT_ROOT[1] + 0.005, y)   # 0 above the neck joint
    jaw = jaw_weight(lay) * (1.0 - root)
    W[:, 0] = root
    W[:, 2] = jaw
    W[:, 1] = 1.0 - root - jaw
    for k, p in ((3, 4), (4, 5)):
        m = lay.part == p
        W[m] = 0.0
        W[m, k] = 1.0
    return W


def joint_regressor(lay: S.HeadLayout) -> np.ndarray:
    """[5,V] rows that sum to 1: ring means for root and neck, side pairs for the jaw, eye means."""
    v = lay.verts
    V = len(v)
    Jr = np.zeros((5, V))
    u = np.nan_to_num(lay.u)
    arc = 1.0 - 0.45 * np.cos(u)                       # column spacing (uniform in angle)
    for k, jy in ((0, S.JOINT_ROOT[1]), (1, S.JOINT_NECK[1])):
        ys = np.array([v[lay.grid[r], 1].mean() for r in range(lay.grid.shape[0])])
        r = int(np.argmin(np.abs(ys - jy)))
        idx = lay.grid[r]
        Jr[k, idx] = arc[idx] / arc[idx].sum()
    # jaw: mean of two symmetric vertex groups in front of the ears, below the cheekbones
    target = np.array([0.066, -0.036, 0.010])
    for sx in (1.0, -1.0):
        t = target * np.array([sx, 1, 1])
        d = np.linalg.norm(v - t, axis=1) + np.where(lay.part == 0, 0.0, 1.0)
        near = np.argsort(d, kind="stable")[:4]
        Jr[2, near] += 0.125
    for k, p in ((3, 4), (4, 5)):
        m = np.nonzero(lay.part == p)[0]
        Jr[k, m] = 1.0 / len(m)
    return Jr


# ---------------------------------------------------------------------------------------------
# blendshapes
# ---------------------------------------------------------------------------------------------
def _eye_rigid_positions(lay: S.HeadLayout) -> np.ndarray:
    """Positions where shape fields are sampled: eyeball vertices use their eyeball's center."""
    p = lay.verts.copy()
    for k, part in ((0, 4), (1, 5)):
        p[lay.part == part] = lay.eye_centers[k]
    return p


def shape_basis(lay: S.HeadLayout) -> np.ndarray:
    """[V,3,300]: orthonormalised low-frequency cosine fields, decaying variance."""
    p = _eye_rigid_positions(lay)
    lo, hi = p.min(0), p.max(0)
    q = (p - lo) / (hi - lo)                                   # [0,1]^3
    orders = sorted(((a, b, c) for a in range(8) for b in range(8) for c in range(8)
                     if 0 < a + b + c <= 7), key=lambda t: (sum(t), t))[:N_SHAPE // 3]
    F = np.stack([np.cos(np.pi * a * q[:, 0]) * np.cos(np.pi * b * q[:, 1]) * np.cos(np.pi * c * q[:, 2])
                  for a, b, c in orders], 1)                   # [V,100] scalar fields
    Qs, R = np.linalg.qr(F)
    Qs = Qs * np.sign(np.diag(R) + (np.diag(R) == 0))[None, :]
    # vector fields f_k * e_axis, interleaved by axis: orthonormal over [3V] since axes are disjoint
    Q = np.zeros((len(p), 3, N_SHAPE))
    for axis in range(3):
        Q[:, axis, axis::3] = Qs
    Q = Q.reshape(-1, N_SHAPE)
    sigma = 1.6 * (np.arange(N_SHAPE) + 1.0) ** -0.75
    return (Q * sigma[None, :]).reshape(len(p), 3, N_SHAPE)


def expression_basis(lay: S.HeadLayout) -> np.ndarray:
    """[V,3,100]: localized facial deformations (jaw, lips, corners, cheeks, brows, lids, nose)."""
    v = lay.verts
    V = len(v)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    skin = np.isin(lay.part, (0, 1, 2, 3))
    front = _ss(0.0, 0.04, z) * skin
    my = lay.mouth_y
    side = np.where(lay.lip_side != 0, lay.lip_side, np.sign(my - y + 1e-9) * -1.0)  # +1 above mouth
    upper = (side > 0).astype(float)
    lower = 1.0 - upper
    jaw = jaw_weight(lay)
    cav = lay.part == 6
    jaw_rel = v - np.array([0.0, -0.03, 0.0])
    fields = []

    def add(f):
        fields.append(np.asarray(f, np.float64))

    def vec(m, d):
        return m[:, None] * np.asarray(d, np.float64)[None, :] if np.ndim(d) == 1 else m[:, None] * d

    mouth = front * _g(x, 0, 0.022) * _g(y, my, 0.014)
    lips = front * _g(x, 0, 0.02) * _g(y, my, 0.008)
    # 0 jaw drop (down and back, as a rotation about the jaw hinge), incl. the cavity floor
    rot = np.stack([np.zeros(V), -jaw_rel[:, 2], jaw_rel[:, 1]], 1) * -1.0
    add(vec(jaw + cav * jaw, rot[:, :] * 1.0 / 0.08))
    # 1 lips part: upper lip up, lower lip down
    add(vec(lips * (upper - lower), [0, 1, 0]))
    for sx_sign in (1.0, -1.0):
        pass
    corners = front * (_g(x, 0.025, 0.009) + _g(x, -0.025, 0.009)) * _g(y, my, 0.009)
    sgnx = np.sign(x)
    # 2 smile: corners up, back and out
    add(vec(corners, np.stack([0.4 * sgnx, np.ones(V) * 0.8, -0.4 * np.ones(V)], 1)))
    # 3 frown: corners down
    add(vec(corners, [0, -1, 0]))
    # 4 pucker: lips forward and toward the middle
    add(vec(mouth, np.stack([-x / 0.025, np.zeros(V), np.ones(V)], 1)))
    # 5 stretch: lips wide
    add(vec(mouth, np.stack([x / 0.025, np.zeros(V), -0.3 * np.ones(V)], 1)))
    cheeks = front * (_g(x, 0.045, 0.014) + _g(x, -0.045, 0.014)) * _g(y, -0.045, 0.016)
    # 6 cheek puff
    add(vec(cheeks, np.stack([sgnx, np.zeros(V), 0.5 * np.ones(V)], 1)))
    brows = front * (_g(x, 0.032, 0.018) + _g(x, -0.032, 0.018)) * _g(y, 0.036, 0.010)
    # 7 brows raise, 8 furrow (inner brows down and in)
    add(vec(brows, [0, 1, 0]))
    inner = front * (_g(x, 0.014, 0.009) + _g(x, -0.014, 0.009)) * _g(y, 0.033, 0.009)
    add(vec(inner, np.stack([-sgnx * 0.5, -np.ones(V), np.zeros(V)], 1)))
    lids = front * (_g(x, S.EYE_X, 0.012) + _g(x, -S.EYE_X, 0.012)) * _g(y, S.EYE_Y + 0.012, 0.006)
    # 9 lids lower (squint), 10 nose wrinkle, 11 jaw sideways, 12 chin raise, 13 lower lip out
    add(vec(lids, [0, -1, 0.3]))
    nose = front * _g(x, 0, 0.012) * _g(y, -0.028, 0.012)
    add(vec(nose, [0, 1, -0.2]))
    add(vec(jaw, [1, 0, 0]))
    chin = front * _g(x, 0, 0.02) * _g(y, -0.105, 0.015)
    add(vec(chin, [0, 1, 0.3]))
    add(vec(lips * lower, [0, -0.3, 1]))
    # 14.. one-sided versions (left, right) of corners, brows, cheeks, lids
    for sel in (x > 0, x < 0):
        s = sel.astype(float)
        add(vec(corners * s, [0, 1, -0.4]))
        add(vec(brows * s, [0, 1, 0]))
        add(vec(cheeks * s, np.stack([sgnx, np.zeros(V), 0.5 * np.ones(V)], 1)))
        add(vec(lids * s, [0, -1, 0.3]))
    # the rest: localized bumps at facial landmarks, deterministic directions and radii
    marks = [(0, my + 0.007), (0, my - 0.009), (0.02, my), (-0.02, my), (0.045, -0.045), (-0.045, -0.045),
             (0.03, 0.036), (-0.03, 0.036), (0, 0.05), (0.012, -0.038), (-0.012, -0.038), (0, -0.10),
             (0.05, -0.08), (-0.05, -0.08), (S.EYE_X, 0.026), (-S.EYE_X, 0.026), (S.EYE_X, -0.004),
             (-S.EYE_X, -0.004)]
    rng = np.random.default_rng(20260521)
    k = 0
    while len(fields) < N_EXPR:
        cx, cy = marks[k % len(marks)]
        rad = (0.010, 0.016, 0.024)[(k // len(marks)) % 3]
        m = front * _g(x, cx, rad) * _g(y, cy, rad)
        if abs(cy - my) < 0.012:
            m = m * (upper if cy >= my else lower)
        d = rng.normal(size=3)
        add(vec(m, d / np.linalg.norm(d)))
        k += 1
    E = np.stack(fields[:N_EXPR], -1)                          # [V,3,100]
    E[np.isin(lay.part, (4, 5))] = 0.0
    E[cav] = E[cav] * 0.0
    E[cav, :, 0] = fields[0][cav]
    # scale: beta = 1 moves the most-displaced vertex by amp_k (about 1 cm for the first ones)
    peak = np.linalg.norm(E, axis=1).max(0)
    amp = 0.011 * (np.arange(N_EXPR) + 1.0) ** -0.35
    return E / peak * amp


def pose_correctives(lay: S.HeadLayout, W: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """[36,V*3] smplx layout: smooth corrections (R - I)(v - j) in the blend zones of neck and jaw.

    Eye rotations have no correctives (the eyeballs are rigid), so rows 18..35 are zero.
    """
    v = lay.verts
    V = len(v)
    D = np.zeros((4, 3, 3, V, 3))
    zones = {
        0: (4.0 * W[:, 0] * (1 - W[:, 0]), joints[1], 0.35),   # neck bend: the root/neck blend zone
        1: (4.0 * W[:, 2] * (1 - W[:, 2]), joints[2], 0.30),   # jaw: the cheek/chin blend zone
    }
    for k, (m, j, beta) in zones.items():
        rel = v - j
        for a in range(3):
            for b in range(3):
                D[k, a, b, :, a] = beta * m * rel[:, b]
    return D.reshape(36, V * 3)


def build_rig(lay: S.HeadLayout) -> dict:
    """All rig arrays of the synthetic head (numpy float64)."""
    W = skinning(lay)
    Jr = joint_regressor(lay)
    joints = Jr @ lay.verts
    sd = np.concatenate([shape_basis(lay), expression_basis(lay)], axis=2)
    return dict(lbs_weights=W, J_regressor=Jr, shapedirs=sd, posedirs=pose_correctives(lay, W, joints),
                vertex_colors=vertex_colors(lay), joints=joints)
