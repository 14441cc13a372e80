"""Vertex colours of the synthetic head (skin, lips, brows, hair, eyes, oral cavity, teeth)."""
from __future__ import annotations

import numpy as np

from . import layout as S


_ss, _g = S._smoothstep, S._g   # the layout's smoothstep and Gaussian bump


def vertex_colors(lay: S.HeadLayout) -> np.ndarray:
    """[V,3] in [0,1]: skin, lips, brows, hair, eyes (sclera, iris, pupil), oral cavity and teeth."""
    v = lay.verts
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    ax = np.abs(x)
    skin = np.array([0.86, 0.66, 0.55])
    C = np.tile(skin, (len(v), 1))
    front = _ss(-0.01, 0.04, z)
    blush = front * (_g(ax, 0.045, 0.014) * _g(y, -0.035, 0.014) + 0.6 * _g(x, 0, 0.008) * _g(y, -0.038, 0.006))
    C += blush[:, None] * np.array([0.05, -0.06, -0.05])
    neck = _ss(-0.12, -0.16, y)
    C = C * (1 - 0.08 * neck[:, None])
    my = lay.mouth_y
    lip = front * _g(x, 0, 0.017) * np.maximum(_g(y, my + 0.005, 0.004), _g(y, my - 0.0065, 0.005))
    lip = np.clip(lip * 1.6, 0, 1) * (ax < 0.028)
    C = C * (1 - lip[:, None]) + lip[:, None] * np.array([0.70, 0.30, 0.32])
    line = (lay.lip_side != 0) * front * (ax < 0.022)
    C = C * (1 - 0.6 * line[:, None]) + 0.6 * line[:, None] * np.array([0.35, 0.12, 0.12])
    brow = front * _g(ax, 0.032, 0.016) * _g(y, 0.037 + 0.004 * np.cos(ax / 0.03), 0.0035)
    brow = np.clip(1.5 * brow, 0, 1)
    hair_c = np.array([0.20, 0.13, 0.08])
    C = C * (1 - brow[:, None]) + brow[:, None] * hair_c
    # hairline: high on the forehead, above the ears on the sides, low on the back of the head
    back = _ss(0.02, -0.06, z)
    line_y = 0.066 - 0.05 * _ss(0.03, 0.07, ax) * (1 - back) - 0.12 * back
    hair = _ss(line_y - 0.006, line_y + 0.006, y) * np.isin(lay.part, (0, 1))
    ear = _ss(0.055, 0.07, ax) * _g(z, -0.008, 0.012) * _g(y, 0.002, 0.02)
    hair = hair * (1 - np.clip(2 * ear, 0, 1))
    C = C * (1 - hair[:, None]) + hair[:, None] * hair_c
    # eyes: angle from the gaze axis (+z through the eyeball center)
    for k, p in ((0, 4), (1, 5)):
        m = lay.part == p
        d = v[m] - lay.eye_centers[k]
        c = d[:, 2] / np.linalg.norm(d, axis=1)
        col = np.tile([0.94, 0.93, 0.90], (m.sum(), 1))
        col[c > 0.80] = [0.28, 0.42, 0.55]
        col[c > 0.93] = [0.04, 0.04, 0.05]
        C[m] = col
    cav = lay.part == 6
    t = lay.cavity_t[cav]
    col = np.tile([0.32, 0.07, 0.08], (cav.sum(), 1))
    col[t < 0.16] = [0.93, 0.92, 0.86]                        # upper teeth
    col[(t > 0.45) & (t < 0.6)] = [0.90, 0.89, 0.83]           # lower teeth
    col[t >= 0.6] = [0.62, 0.28, 0.30]                         # tongue
    C[cav] = col
    return np.clip(C, 0.0, 1.0)
