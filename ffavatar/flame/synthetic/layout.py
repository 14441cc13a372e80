"""Geometry of the embedded default head: a procedural, FLAME-structured synthetic head.

FLAME itself may not be redistributed, so demos, tests and benchmarks use this stand-in with the
exact FLAME structure: V = 5,023 vertices, J = 5 joints (global, neck, jaw, left eye, right eye;
parents [-1,0,1,1,1]), 300 shape + 100 expression blendshapes, 36 pose correctives, skinning
weights and vertex colors. Units are meters; +y is up, the face looks toward +z and the subject's
left is +x.

Geometry: a skull ellipsoid with a lowered jaw in front and a neck below, sampled on a grid of rows
(top to neck) x columns (around, denser at the face); facial features (nose, brows, eye sockets,
cheekbones, lips, chin, ears) are smooth displacements along the normal. The mouth is a slit (the
lower-lip vertices of the mouth row are duplicated) with a dark oral cavity behind it, so the jaw
really opens the mouth. Two eyeball spheres sit in the sockets, skinned rigidly to the eye joints.

The blendshapes, skinning weights, joint regressor and pose correctives are built in
:mod:`ffavatar.flame.synthetic.rig`, the colours in :mod:`ffavatar.flame.synthetic.colors`;
:mod:`ffavatar.flame.synthetic.head` assembles the FlameModel. Everything is deterministic (fixed
formulas and a fixed-seed RNG) and takes a fraction of a second; the result is cached.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SYNTHETIC_NUM_VERTICES", "HeadLayout", "build_layout"]

SYNTHETIC_NUM_VERTICES = 5023

# grid and part sizes (chosen so that the total is exactly 5,023 vertices)
N_LON = 80            # columns around the head
N_ROWS = 55           # rows from the top of the skull to the bottom of the neck
MOUTH_HALF = 6        # mouth slit: columns jm-6 .. jm+6 (corners shared, 11 duplicated)
EYE_LAT, EYE_LON = 10, 16
CAV_ROWS, CAV_COLS = 13, 22

# anatomy (meters)
SKULL = np.array([0.076, 0.100, 0.094])          # ellipsoid radii x, y, z
JAW_DROP = 0.34                                  # front-lower stretch of the ellipsoid (lower face)
NECK_R = np.array([0.052, 0.056])                # neck ellipse radii x, z
NECK_Z = -0.018                                  # neck center z
NECK_BOTTOM = -0.215
PHI_HEAD = 2.52                                  # polar angle where the head rows end
MOUTH_Y = -0.066                                 # target height of the mouth line
EYE_X, EYE_Y, EYE_R = 0.033, 0.012, 0.0125
JOINT_ROOT = np.array([0.0, -0.170, -0.018])
JOINT_NECK = np.array([0.0, -0.100, -0.022])


@dataclasses.dataclass
class HeadLayout:
    """Index sets and canonical geometry of the synthetic head (numpy, float64)."""

    verts: np.ndarray          # [V,3]
    faces: np.ndarray          # [F,3] int64
    grid: np.ndarray           # [N_ROWS,N_LON] vertex index of each grid vertex
    u: np.ndarray              # [V] longitude parameter of grid/dup vertices (0 = front), nan elsewhere
    row: np.ndarray            # [V] grid row (float; -1 for the top pole), nan for non-grid parts
    part: np.ndarray           # [V] int: 0 skin grid, 1 top pole, 2 neck cap, 3 lower-lip dup, 4 left eye, 5 right eye, 6 cavity
    lip_side: np.ndarray       # [V] +1 upper side of the mouth slit, -1 lower side, 0 elsewhere
    mouth_row: int
    mouth_y: float
    eye_centers: np.ndarray    # [2,3] left, right
    cavity_t: np.ndarray       # [V] 0 (top) .. 1 (bottom) over the oral cavity, nan elsewhere


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _g(x, c, s):
    return np.exp(-0.5 * ((x - c) / s) ** 2)


def _feature_displacement(p: np.ndarray, mouth_y: float) -> np.ndarray:
    """Outward displacement [V] (meters) of base-surface points p [V,3]: the facial features."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    front = _smoothstep(0.0, 0.05, z)
    ax = np.abs(x)
    d = np.zeros(len(p))
    # nose: a ridge growing from the bridge to the tip, widening toward the nostrils
    t = np.clip((0.012 - y) / 0.050, 0.0, 1.0)
    tip_cut = np.exp(-0.5 * (np.maximum(0.0, (-0.040) - y) / 0.0045) ** 2)
    width = 0.0055 + 0.0085 * t
    d += (0.004 + 0.024 * t ** 1.4) * tip_cut * np.exp(-0.5 * (x / width) ** 2) * (y < 0.02)
    d += 0.003 * _g(ax, 0.013, 0.004) * _g(y, -0.040, 0.005)            # nostril wings
    # eye sockets, brows, cheekbones
    d -= 0.012 * _g(ax, EYE_X, 0.013) * _g(y, EYE_Y, 0.010)
    d += 0.006 * _g(ax, 0.032, 0.020) * _g(y, 0.034, 0.007)
    d += 0.007 * _g(ax, 0.048, 0.013) * _g(y, -0.020, 0.013)
    # lips, mouth corners, chin, philtrum
    d += 0.0075 * _g(x, 0.0, 0.019) * _g(y, mouth_y + 0.0065, 0.0050)
    d += 0.0080 * _g(x, 0.0, 0.016) * _g(y, mouth_y - 0.0080, 0.0060)
    d -= 0.0030 * _g(ax, 0.025, 0.004) * _g(y, mouth_y, 0.005)
    d += 0.0090 * _g(x, 0.0, 0.017) * _g(y, -0.112, 0.012)
    d -= 0.0025 * _g(y, -0.088, 0.006) * _g(x, 0.0, 0.02)                # labiomental fold
    d *= front
    # ears: flaps on the sides, slightly behind the middle
    side = _smoothstep(0.055, 0.07, ax)
    d += 0.016 * side * _g(z, -0.008, 0.011) * _g(y, 0.002, 0.020)
    return d


def _head_grid():
    """Base grid positions [N_ROWS,N_LON,3], outward directions, u, and the top pole."""
    j = np.arange(N_LON)
    u = -np.pi + 2.0 * np.pi * (j + 0.5) / N_LON                 # front (u=0) at the middle column
    theta = u - 0.45 * np.sin(u)                                  # denser columns at the face
    n_head = 40
    rows = []
    for r in range(N_ROWS):
        if r < n_head:
            phi = PHI_HEAD * ((r + 1) / n_head) ** 0.9
            s, c = np.sin(phi), np.cos(phi)
            x = SKULL[0] * s * np.sin(theta)
            zc = np.cos(theta)
            z = SKULL[2] * s * zc
            lower = _smoothstep(0.0, 1.0, -c)                     # 0 above the equator
            y = SKULL[1] * c * (1.0 + JAW_DROP * lower * np.clip(zc, 0.0, 1.0) ** 1.5)
            # flatten the face a little and pull the lower back of the skull in toward the neck
            z = np.where(zc > 0, z * (1.0 - 0.08 * s * zc ** 2), z * (1.0 - 0.25 * lower))
            rows.append(np.stack([x, y, z], -1))
        else:
            k = (r - n_head + 1) / (N_ROWS - n_head)
            last = rows[n_head - 1]
            y0 = last[:, 1]
            y = y0 + (NECK_BOTTOM - y0) * k ** 1.1
            neck = np.stack([NECK_R[0] * np.sin(theta), y, NECK_Z + NECK_R[1] * np.cos(theta)], -1)
            b = _smoothstep(0.0, 0.35, k)
            p = last * (1 - b) + neck * b
            p[:, 1] = y
            rows.append(p)
    P = np.stack(rows)                                           # [R,L,3]
    top = np.array([0.0, SKULL[1] * 1.0, 0.0])
    return P, u, top


def build_layout() -> HeadLayout:
    """Build the canonical synthetic head geometry (vertices, faces and index sets)."""
    P, u, top = _head_grid()
    R, L = P.shape[:2]
    jm = L // 2
    # mouth row: the row whose front vertex is closest to MOUTH_Y
    mouth_row = int(np.argmin(np.abs(P[:, jm, 1] - MOUTH_Y)))
    mouth_y = float(0.5 * (P[mouth_row, jm, 1] + P[mouth_row, jm - 1, 1]))
    # outward normals of the base grid, from finite differences (pole-safe)
    du = np.roll(P, -1, 1) - np.roll(P, 1, 1)
    dv = np.concatenate([P[1:2] - top, P[2:] - P[:-2], P[-1:] - P[-2:-1]], 0)
    nrm = np.cross(dv, du)                                     # outward
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True) + 1e-12
    flat = P.reshape(-1, 3)
    disp = _feature_displacement(flat, mouth_y).reshape(R, L, 1)
    P = P + disp * nrm

    grid = np.arange(R * L).reshape(R, L)
    verts = [P.reshape(-1, 3), top[None], np.array([[0.0, NECK_BOTTOM, NECK_Z]])]
    i_top, i_cap = R * L, R * L + 1
    nv = R * L + 2
    # lower-lip duplicates of the mouth row (between the corners)
    mcols = np.arange(jm - MOUTH_HALF + 1, jm + MOUTH_HALF)
    dup = np.arange(nv, nv + len(mcols))
    verts.append(P[mouth_row, mcols])
    nv += len(mcols)
    lower_row = grid[mouth_row].copy()
    lower_row[mcols] = dup

    faces = []
    jn = np.roll(np.arange(L), -1)
    for r in range(R - 1):
        a = lower_row if r == mouth_row else grid[r]
        b = grid[r + 1]
        faces.append(np.stack([a, b, a[jn]], -1))
        faces.append(np.stack([a[jn], b, b[jn]], -1))
    faces.append(np.stack([np.full(L, i_top), grid[0], grid[0][jn]], -1))
    faces.append(np.stack([grid[-1], np.full(L, i_cap), grid[-1][jn]], -1))

    # eyeballs
    eye_centers = []
    part_eye = []
    for side, sx in ((0, 1.0), (1, -1.0)):
        cx, cy = sx * EYE_X, EYE_Y
        # depth: the socket surface at (cx, cy) on the front, minus part of the radius
        front = flat[:, 2] > 0
        k = np.argmin(np.where(front, (P.reshape(-1, 3)[:, 0] - cx) ** 2 + (P.reshape(-1, 3)[:, 1] - cy) ** 2, np.inf))
        cz = P.reshape(-1, 3)[k, 2] - 0.62 * EYE_R
        c = np.array([cx, cy, cz])
        eye_centers.append(c)
        th = np.pi * np.arange(1, EYE_LAT + 1) / (EYE_LAT + 1)   # polar angle from +z (the gaze)
        ph = 2 * np.pi * np.arange(EYE_LON) / EYE_LON
        st, ct = np.sin(th)[:, None], np.cos(th)[:, None]
        sph = np.stack([st * np.cos(ph), st * np.sin(ph), np.broadcast_to(ct, (EYE_LAT, EYE_LON))], -1)
        ev = np.concatenate([sph.reshape(-1, 3), [[0, 0, 1.0]], [[0, 0, -1.0]]]) * EYE_R + c
        base = nv
        eg = base + np.arange(EYE_LAT * EYE_LON).reshape(EYE_LAT, EYE_LON)
        pf, pb = base + EYE_LAT * EYE_LON, base + EYE_LAT * EYE_LON + 1
        en = np.roll(np.arange(EYE_LON), -1)
        for r in range(EYE_LAT - 1):
            faces.append(np.stack([eg[r], eg[r + 1], eg[r][en]], -1))
            faces.append(np.stack([eg[r][en], eg[r + 1], eg[r + 1][en]], -1))
        faces.append(np.stack([np.full(EYE_LON, pf), eg[0], eg[0][en]], -1))
        faces.append(np.stack([np.full(EYE_LON, pb), eg[-1][en], eg[-1]], -1))
        verts.append(ev)
        part_eye.append((base, base + len(ev)))
        nv += len(ev)

    # oral cavity: a curved dark surface behind the lips, from above the mouth line to below it
    cav0 = nv
    lip_z = P[mouth_row, jm, 2]
    cs = np.linspace(-1.0, 1.0, CAV_COLS)
    ts = np.linspace(0.0, 1.0, CAV_ROWS)
    cx = 0.028 * cs[None, :]
    cy = (mouth_y + 0.011 - 0.032 * ts)[:, None] + 0 * cs[None, :]
    cz = lip_z - 0.016 - 0.016 * cs[None, :] ** 2 - 0.012 * np.sin(np.pi * ts)[:, None]
    cav = np.stack([np.broadcast_to(cx, cy.shape), cy, np.broadcast_to(cz, cy.shape)], -1)
    verts.append(cav.reshape(-1, 3))
    cg = cav0 + np.arange(CAV_ROWS * CAV_COLS).reshape(CAV_ROWS, CAV_COLS)
    for r in range(CAV_ROWS - 1):
        faces.append(np.stack([cg[r, :-1], cg[r + 1, :-1], cg[r, 1:]], -1))
        faces.append(np.stack([cg[r, 1:], cg[r + 1, :-1], cg[r + 1, 1:]], -1))
    nv += CAV_ROWS * CAV_COLS

    verts = np.concatenate(verts).astype(np.float64)
    faces = np.concatenate(faces).astype(np.int64)
    if len(verts) != SYNTHETIC_NUM_VERTICES:
        raise RuntimeError(f"synthetic head: built {len(verts)} vertices, expected {SYNTHETIC_NUM_VERTICES}")

    V = len(verts)
    part = np.zeros(V, np.int64)
    part[i_top], part[i_cap] = 1, 2
    part[dup] = 3
    part[part_eye[0][0]:part_eye[0][1]] = 4
    part[part_eye[1][0]:part_eye[1][1]] = 5
    part[cav0:] = 6
    uu = np.full(V, np.nan)
    rr = np.full(V, np.nan)
    uu[:R * L] = np.tile(u, R)
    rr[:R * L] = np.repeat(np.arange(R), L)
    uu[dup], rr[dup] = u[mcols], mouth_row + 0.5   # the lower lip sits "just below" the mouth row
    uu[i_top], rr[i_top] = 0.0, -1.0
    uu[i_cap], rr[i_cap] = 0.0, R
    lip_side = np.zeros(V)
    lip_side[grid[mouth_row, mcols]] = 1.0
    lip_side[dup] = -1.0
    cav_t = np.full(V, np.nan)
    cav_t[cav0:] = np.repeat(ts, CAV_COLS)
    return HeadLayout(verts=verts, faces=faces, grid=grid, u=uu, row=rr, part=part, lip_side=lip_side,
                      mouth_row=mouth_row, mouth_y=mouth_y, eye_centers=np.stack(eye_centers),
                      cavity_t=cav_t)
