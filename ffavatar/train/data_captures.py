"""Real multi-view captures tracked with FLAME, in the layout VHAP writes (the tracker of
GaussianAvatars; its NeRSemble exports are the public example of this layout).

One subject is a folder::

    subject/
      transforms.json                 # or transforms_train.json / _val / _test (``transforms=``)
      images/<timestep>_<camera>.png  # any paths: each frame names its own file
      fg_masks/...png                 # optional foreground masks (white = head)
      flame_param/<timestep>.npz      # FLAME parameters of one timestep

``transforms.json``: optional top-level defaults ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h``,
and ``frames``, a list of one entry per image:

==================  ===================================================================
key                 meaning
==================  ===================================================================
file_path           the image, relative to the subject folder
fg_mask_path        optional mask; the image is composited onto ``background`` with it
flame_param_path    the timestep's ``.npz`` (relative to the subject folder)
timestep_index      int; frames of one timestep share the expression and pose
camera_index        int (``camera_id`` works too)
transform_matrix    4x4 camera-to-world, OpenGL axes (x right, y up, z backwards)
fl_x fl_y cx cy w h  intrinsics in pixels of this image (else the top-level ones)
==================  ===================================================================

FLAME ``.npz`` keys (leading dimension 1 or none; the mapping of ``ffavatar.flame.motion_io``):
``expr`` [n], ``rotation`` [3] (global, axis-angle), ``neck_pose`` [3], ``jaw_pose`` [3],
``eyes_pose`` [6], ``translation`` [3], ``shape`` [n_shape]; ``static_offset`` and other keys are
ignored.

How a frame becomes our conventions: the camera becomes world-to-camera with OpenCV axes
(``viewmats``, x right, y down, z forward, as the rasterizer takes them); the head's global
rotation and translation are folded into it (FLAME rotates about its root joint, so the pivot is
that joint of the frame's shaped and expressed template), which leaves ``rotation`` = 0 in
``flame_pose`` exactly as the synthetic data has it. Images are centre-cropped to a square and
resized to ``image_size`` (the intrinsics follow). The per-view ground truth in the estimator's
convention (:func:`ffavatar.train.data_synthetic.camera_matrices`: head rotation in the camera
frame, translation, focal) is derived from the folded camera, so the parameter loss supervises
the estimator on real data too.

A sample (``dataset.sample(i)``): subject ``i mod S``; a random timestep whose k cameras are the
conditioning views; M target views drawn from the other (timestep, camera) pairs, preferring
other timesteps. Pure function of ``(seed, split, index)``, like the synthetic data.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ffavatar.flame import FlameModel
from ffavatar_kernels.reference.flame_lbs import batch_rodrigues
from ffavatar_kernels.reference.rotations import matrix_to_quat

from .data_synthetic import VIEW_KEYS, sample_seed

__all__ = ["CaptureError", "CaptureSample", "TrackedCaptures", "matrix_to_axis_angle"]

_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


class CaptureError(ValueError):
    """A capture folder that is missing, malformed or inconsistent (names the file and the key)."""


@dataclass
class CaptureSample:
    """One training sample of a real capture: the fields :class:`~ffavatar.train.objective.
    FewToManyObjective` reads, as :class:`~ffavatar.train.data_synthetic.SyntheticSample` has
    them: ``images`` [k,3,S,S], ``target_images`` [M,3,S,S] in [0,1], ``shape`` [n_shape],
    ``cond`` / ``target`` dicts of :data:`VIEW_KEYS`; ``subject`` the folder."""
    index: int
    subject: str
    images: torch.Tensor
    target_images: torch.Tensor
    shape: torch.Tensor
    cond: dict
    target: dict

    def to(self, device) -> "CaptureSample":
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return CaptureSample(self.index, self.subject, self.images.to(device), self.target_images.to(device),
                             self.shape.to(device), mv(self.cond), mv(self.target))


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """[...,3,3] rotations -> [...,3] axis-angle (radians, angle in [0, pi])."""
    q = matrix_to_quat(R)                                             # wxyz
    q = torch.where(q[..., :1] < 0, -q, q)
    s = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    scale = torch.where(s > 1e-8, angle / s.clamp_min(1e-12), 2.0 + torch.zeros_like(s))
    return q[..., 1:] * scale


def _vec(npz, key: str, n: int, path: str) -> np.ndarray:
    if key not in npz.files:
        return np.zeros(n)
    a = np.asarray(npz[key], dtype=np.float64).reshape(-1)
    if key in ("expr", "shape"):
        a = a[:n] if a.size >= n else np.pad(a, (0, n - a.size))
    elif a.size != n:
        raise CaptureError(f"{path}: key {key!r} has {a.size} values, expected {n} (one timestep)")
    if not np.isfinite(a).all():
        raise CaptureError(f"{path}: key {key!r} holds NaN or Inf")
    return a


class TrackedCaptures(torch.utils.data.Dataset):
    """Multi-view captures tracked by VHAP (see the module docstring).

    Args:
        roots: one subject folder or a list of them.
        model: the FLAME model the tracking used (its joint regressor gives the rotation pivot;
            its ``n_shape`` / ``n_expr`` size the parameters).
        image_size: side of the square images returned.
        min_views, max_views: k conditioning cameras of one timestep, uniform in the range (at
            most the cameras that timestep has).
        num_targets: M target views.
        transforms: the file name inside each folder (``transforms_train.json`` for a split).
        background: RGB behind the masked head (masks used when the frames name them).
        distance: the estimator's camera distance (``SyntheticConfig.distance``).
    """

    def __init__(self, roots: "str | os.PathLike | Sequence", model: FlameModel, *, image_size: int = 128,
                 min_views: int = 1, max_views: int = 4, num_targets: int = 8, seed: int = 0,
                 split: str = "train", transforms: str = "transforms.json",
                 background: Sequence[float] = (0.0, 0.0, 0.0), distance: float = 0.75):
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        if not roots:
            raise CaptureError("roots: expected at least one capture folder")
        if not 1 <= min_views <= max_views or num_targets < 1 or image_size < 1:
            raise ValueError(f"TrackedCaptures: need 1 <= min_views <= max_views, num_targets >= 1, image_size >= 1; "
                             f"got {min_views}, {max_views}, {num_targets}, {image_size}")
        self.model = model.to("cpu", torch.float64)
        self.image_size, self.min_views, self.max_views = int(image_size), int(min_views), int(max_views)
        self.num_targets, self.seed, self.split = int(num_targets), int(seed), str(split)
        self.background = torch.tensor([float(c) for c in background])
        self.distance = float(distance)
        self.subjects = [self._index(os.fspath(r), transforms) for r in roots]

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> CaptureSample:
        return self.sample(index)

    # ------------------------------------------------------------------------------ reading
    def _index(self, root: str, transforms: str) -> dict:
        path = os.path.join(root, transforms)
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except OSError as exc:
            raise CaptureError(f"{path}: cannot read the capture's transforms ({exc.strerror})") from None
        except ValueError as exc:
            raise CaptureError(f"{path}: not valid JSON ({exc})") from None
        frames = meta.get("frames") if isinstance(meta, dict) else None
        if not isinstance(frames, list) or not frames:
            raise CaptureError(f"{path}: expected an object with a non-empty list 'frames'")
        by_time: dict = {}
        for i, fr in enumerate(frames):
            where = f"{path}: frames[{i}]"
            for key in ("file_path", "flame_param_path", "transform_matrix"):
                if key not in fr:
                    raise CaptureError(f"{where}: missing key {key!r}")
            intr = {}
            for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
                v = fr.get(key, meta.get(key))
                if v is None:
                    raise CaptureError(f"{where}: missing key {key!r} (per frame or top level)")
                intr[key] = float(v)
            c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
            if c2w.shape != (4, 4) or not np.isfinite(c2w).all() or abs(np.linalg.det(c2w[:3, :3])) < 1e-6:
                raise CaptureError(f"{where}: 'transform_matrix' must be a finite, invertible 4x4 camera-to-world")
            t = int(fr.get("timestep_index", 0))
            by_time.setdefault(t, []).append({
                "image": os.path.join(root, fr["file_path"]),
                "mask": os.path.join(root, fr["fg_mask_path"]) if fr.get("fg_mask_path") else None,
                "flame": os.path.join(root, fr["flame_param_path"]), "c2w": c2w, **intr})
        return {"root": root, "times": sorted(by_time), "frames": by_time}

    def _flame(self, path: str) -> dict:
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CaptureError(f"{path}: not a readable .npz of FLAME parameters ({exc})") from None
        with npz:
            m = self.model
            return {"expr": _vec(npz, "expr", m.n_expr, path), "rotation": _vec(npz, "rotation", 3, path),
                    "neck_pose": _vec(npz, "neck_pose", 3, path), "jaw_pose": _vec(npz, "jaw_pose", 3, path),
                    "eyes_pose": _vec(npz, "eyes_pose", 6, path), "translation": _vec(npz, "translation", 3, path),
                    "shape": _vec(npz, "shape", m.n_shape, path)}

    def _image(self, fr: dict) -> tuple[torch.Tensor, float, float, float]:
        """-> ([3,S,S] in [0,1], scale, crop left, crop top) of one frame."""
        import imageio.v3 as iio
        try:
            a = np.asarray(iio.imread(fr["image"]))
        except Exception as exc:  # noqa: BLE001 -- imageio raises many types
            raise CaptureError(f"{fr['image']}: cannot read the image ({exc})") from None
        img = torch.from_numpy(a.astype(np.float32) / (65535.0 if a.dtype == np.uint16 else 255.0))
        img = img[..., None].expand(*img.shape, 3) if img.dim() == 2 else img[..., :3]
        if fr["mask"] is not None:
            try:
                mk = np.asarray(iio.imread(fr["mask"]), dtype=np.float32)
            except Exception as exc:  # noqa: BLE001
                raise CaptureError(f"{fr['mask']}: cannot read the mask ({exc})") from None
            mk = torch.from_numpy(mk / max(1.0, float(mk.max())))
            mk = mk[..., :1] if mk.dim() == 3 else mk[..., None]
            if mk.shape[:2] != img.shape[:2]:
                raise CaptureError(f"{fr['mask']}: mask size {list(mk.shape[:2])} differs from the image's "
                                   f"{list(img.shape[:2])}")
            img = img * mk + self.background * (1 - mk)
        h, w = img.shape[:2]
        if (w, h) != (int(fr["w"]), int(fr["h"])):
            raise CaptureError(f"{fr['image']}: image is {w}x{h} but the transforms say {int(fr['w'])}x{int(fr['h'])}")
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = img[top:top + side, left:left + side].permute(2, 0, 1)[None]
        if side != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=side > self.image_size)
        return x[0].clamp(0, 1), self.image_size / side, float(left), float(top)

    def _joint0(self, p: dict) -> torch.Tensor:
        """The root joint of the frame's shaped and expressed template [3] (FLAME's rotation pivot)."""
        m = self.model
        betas = torch.cat([torch.from_numpy(p["shape"]), torch.from_numpy(p["expr"])])
        v = m.v_template + m.shapedirs @ betas
        return m.J_regressor[0] @ v

    def view(self, fr: dict, params: dict) -> tuple[torch.Tensor, dict]:
        """One frame -> (image [3,S,S], per-view parameters of :data:`VIEW_KEYS`, float32)."""
        img, scale, left, top = self._image(fr)
        c2w = torch.from_numpy(fr["c2w"]) @ _OPENGL_TO_OPENCV
        w2c = torch.linalg.inv(c2w)
        Rg = batch_rodrigues(torch.from_numpy(params["rotation"])[None])[0]
        j0 = self._joint0(params)
        head = torch.eye(4, dtype=torch.float64)                   # canonical -> world
        head[:3, :3] = Rg
        head[:3, 3] = j0 - Rg @ j0 + torch.from_numpy(params["translation"])
        vm = w2c @ head
        K = torch.tensor([[fr["fl_x"] * scale, 0.0, (fr["cx"] - left) * scale],
                          [0.0, fr["fl_y"] * scale, (fr["cy"] - top) * scale], [0.0, 0.0, 1.0]], dtype=torch.float64)
        # the estimator's convention: vm = [diag(1,-1,-1) R(rotation) | translation + (0,0,distance)]
        rot = matrix_to_axis_angle(torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)) @ vm[:3, :3])
        v = {"expr": torch.from_numpy(params["expr"]), "jaw_pose": torch.from_numpy(params["jaw_pose"]),
             "eyes_pose": torch.from_numpy(params["eyes_pose"]), "neck_pose": torch.from_numpy(params["neck_pose"]),
             "rotation": rot, "translation": vm[:3, 3] - torch.tensor([0.0, 0.0, self.distance], dtype=torch.float64),
             "focal": 0.5 * (K[0, 0] + K[1, 1]), "viewmats": vm, "Ks": K}
        return img, {k: t.float() for k, t in v.items()}

    # ------------------------------------------------------------------------------ sampling
    def sample(self, index: int, device="cpu", num_views: Optional[int] = None) -> CaptureSample:
        """Sample ``index`` (see the module docstring); ``num_views`` fixes k (evaluation)."""
        if index < 0:
            raise ValueError(f"TrackedCaptures.sample: index must be >= 0, got {index}")
        subj = self.subjects[index % len(self.subjects)]
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.split, index))
        pick = lambda n: int(torch.randint(n, (), generator=g))  # noqa: E731
        t = subj["times"][pick(len(subj["times"]))]
        cams = subj["frames"][t]
        k = int(torch.randint(self.min_views, self.max_views + 1, (), generator=g)) if num_views is None else int(num_views)
        k = max(1, min(k, len(cams)))
        order = torch.randperm(len(cams), generator=g).tolist()
        cond_frames = [cams[i] for i in order[:k]]
        others = [(tt, fr) for tt in subj["times"] if tt != t for fr in subj["frames"][tt]]
        same = [(t, cams[i]) for i in order[k:]]
        pool = others or same
        if not pool:
            raise CaptureError(f"{subj['root']}: one image only; targets need a second view or timestep")
        tgt = [pool[i] for i in torch.randint(len(pool), (self.num_targets,), generator=g).tolist()]
        params = {}

        def load(tt, fr):
            if fr["flame"] not in params:
                params[fr["flame"]] = self._flame(fr["flame"])
            return self.view(fr, params[fr["flame"]])

        conds = [load(t, fr) for fr in cond_frames]
        targets = [load(tt, fr) for tt, fr in tgt]
        stack = lambda views: {key: torch.stack([v[key] for _, v in views]).to(device) for key in VIEW_KEYS}  # noqa: E731
        shape = torch.from_numpy(params[cond_frames[0]["flame"]]["shape"]).float()
        return CaptureSample(index=int(index), subject=subj["root"],
                             images=torch.stack([im for im, _ in conds]).to(device),
                             target_images=torch.stack([im for im, _ in targets]).to(device),
                             shape=shape.to(device), cond=stack(conds), target=stack(targets))
