"""Motion files: FLAME parameter sequences in ``.npz`` with the key names face trackers write.

:func:`load_motion` reads a sequence of T frames into the model's layout; :func:`save_motion`
writes one (atomically) with the first key name of each row below, so our files open in tools that
read tracker output and tracker output opens here.

Key mapping (T frames; every pose is axis-angle, radians; the first name is the one we write):

=================  ==============================================  ========  ==========================
parameter          keys accepted (aliases)                         shape     goes to
=================  ==============================================  ========  ==========================
expression         ``expr``, ``expression``, ``exp``               [T,n]     ``expression`` [T,n_expr]
global rotation    ``rotation``, ``global_pose``, ``root_pose``,   [T,3]     pose joint 0 (global)
                   ``global_orient``
neck               ``neck_pose``                                   [T,3]     pose joint 1 (neck)
jaw                ``jaw_pose``                                    [T,3]     pose joint 2 (jaw)
eyes               ``eyes_pose``, ``eye_pose`` (left eye, then     [T,6]     pose joints 3, 4
                   right eye); or ``leye_pose`` + ``reye_pose``    [T,3]     (left eye, right eye)
translation        ``translation``, ``transl``, ``trans``          [T,3]     ``translation`` [T,3]
shape (optional)   ``shape``                                       [n]       ``shape`` [n_shape] or
                                                                   [T,n]     [T,n_shape]
frame rate (opt.)  ``fps``                                         scalar    ``fps`` (float)
=================  ==============================================  ========  ==========================

``pose`` is [T,J*3] in FLAME's joint order (global, neck, jaw, left eye, right eye; J = 5); a
parameter whose keys are absent is zero (a file needs at least one expression or pose key).
Other keys (cameras, image sizes, landmarks, ...) are ignored and listed in ``Motion.ignored_keys``.
Two aliases of one parameter in one file are an error (which one wins would be a guess).

Expression count: with a model, the expression is fitted to its ``n_expr`` components. Fewer in
the file: padded with zeros (FLAME's components are ordered by variance, so a tracker using the
first 50 of 100 means exactly that). More in the file: truncated, and a :class:`MotionWarning` is
issued when a dropped component is non-zero. Either adjustment is recorded as a sentence in
``Motion.notes``. ``shape`` is fitted to ``n_shape`` the same way.

Errors: :class:`MotionFileError` (a ValueError) naming the file and the key, for a missing file, a
file that is not an ``.npz`` archive or is corrupt, keys holding Python objects, non-numeric data,
no expression or pose key at all, wrong shapes, frame counts that differ between keys, NaN / Inf,
and a non-positive or non-finite fps.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from typing import Optional

import numpy as np
import torch

from .atomic import atomic_write
from .model import FlameModel

__all__ = ["Motion", "MotionFileError", "MotionWarning", "load_motion", "save_motion", "MOTION_KEYS"]

# parameter -> (accepted keys, last dimension)
MOTION_KEYS = {
    "expression": (("expr", "expression", "exp"), None),
    "rotation": (("rotation", "global_pose", "root_pose", "global_orient"), 3),
    "neck_pose": (("neck_pose",), 3),
    "jaw_pose": (("jaw_pose",), 3),
    "eyes_pose": (("eyes_pose", "eye_pose"), 6),
    "leye_pose": (("leye_pose",), 3),
    "reye_pose": (("reye_pose",), 3),
    "translation": (("translation", "transl", "trans"), 3),
}
_POSE_PARAMS = ("rotation", "neck_pose", "jaw_pose", "eyes_pose", "leye_pose", "reye_pose")
NUM_JOINTS = 5


class MotionFileError(ValueError):
    """A motion file is missing, unreadable or malformed (the message names the file and the key)."""


class MotionWarning(UserWarning):
    """A motion file's content was changed to fit the model (non-zero expression components dropped)."""


@dataclasses.dataclass
class Motion:
    """A FLAME parameter sequence of T frames.

    Attributes:
        expression: [T,n_expr] expression coefficients.
        pose: [T,J*3] axis-angle per joint (global, neck, jaw, left eye, right eye).
        translation: [T,3] metres (zeros when the file has none).
        shape: optional [n_shape] or [T,n_shape] shape coefficients.
        fps: optional frame rate.
        source_keys: parameter -> the file key it came from.
        ignored_keys: keys of the file that were not read.
        notes: sentences describing every adjustment (padding, truncation).
    """
    expression: torch.Tensor
    pose: torch.Tensor
    translation: torch.Tensor
    shape: Optional[torch.Tensor] = None
    fps: Optional[float] = None
    source_keys: dict = dataclasses.field(default_factory=dict)
    ignored_keys: tuple = ()
    notes: tuple = ()

    @property
    def num_frames(self) -> int:
        return self.pose.shape[0]


def _fit(a: np.ndarray, n: int, what: str, path: str, notes: list) -> np.ndarray:
    """Pad with zeros / truncate the last axis of ``a`` to ``n`` components, noting it."""
    have = a.shape[-1]
    if have < n:
        notes.append(f"{what}: padded from {have} to {n} components with zeros")
        return np.concatenate([a, np.zeros(a.shape[:-1] + (n - have,), a.dtype)], -1)
    if have > n:
        dropped = a[..., n:]
        notes.append(f"{what}: truncated from {have} to {n} components")
        if np.any(dropped != 0):
            warnings.warn(f"{path}: {what} has {have} components, the model {n}; dropped components "
                          f"{n}..{have - 1} are non-zero (max |value| {float(np.abs(dropped).max()):.3g})",
                          MotionWarning, stacklevel=3)
        return a[..., :n]
    return a


def _read(path: str) -> dict:
    """The arrays of an .npz file (every member read now, so corruption shows here)."""
    if not os.path.exists(path):
        raise MotionFileError(f"{path}: no such motion file")
    if os.path.isdir(path):
        raise MotionFileError(f"{path}: is a folder, not a motion .npz file")
    if os.path.getsize(path) == 0:
        raise MotionFileError(f"{path}: empty file, not a motion .npz archive")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MotionFileError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise MotionFileError(f"{path}: a single .npy array, not an .npz archive of named FLAME parameters")
    out = {}
    with z:
        for k in z.files:
            try:
                out[k] = z[k]
            except ValueError as exc:
                if "pickle" in str(exc):
                    raise MotionFileError(f"{path}: key {k!r} holds Python objects (pickled), "
                                          "not a numeric array") from None
                raise MotionFileError(f"{path}: key {k!r} is corrupt ({exc})") from None
            except Exception as exc:  # zlib / BadZipFile / truncated member
                raise MotionFileError(f"{path}: key {k!r} is corrupt ({type(exc).__name__}: {exc})") from None
    return out


def _numeric(path: str, key: str, a: np.ndarray) -> np.ndarray:
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise MotionFileError(f"{path}: key {key!r} expected a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0]
        at = f" at frame {int(where[0])}" if a.ndim >= 2 else f" at index {tuple(int(i) for i in where)}"
        raise MotionFileError(f"{path}: key {key!r} has non-finite values (NaN or Inf){at}")
    return a


def load_motion(path: "str | os.PathLike", model: Optional[FlameModel] = None, *, dtype=None,
                device=None) -> Motion:
    """Read a motion ``.npz`` (key mapping in the module docstring).

    Args:
        path: the file.
        model: fit expression / shape to its ``n_expr`` / ``n_shape`` (and take its dtype and
            device); without one, the file's counts are kept.
        dtype, device: of the returned tensors (default: the model's, else float32 on the CPU).

    Returns:
        :class:`Motion` (expression [T,n_expr], pose [T,15], translation [T,3], ...).

    Raises:
        MotionFileError: see the module docstring.
        ValueError: the model does not have FLAME's 5 joints.
    """
    path = os.fspath(path)
    if model is not None and not isinstance(model, FlameModel):
        raise TypeError(f"load_motion: model expected a FlameModel or None, got {type(model).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"load_motion: dtype expected a floating dtype (a torch.dtype such as torch.float32), got {dtype!r}")
    if model is not None and model.num_joints != NUM_JOINTS:
        raise ValueError(f"load_motion: model has {model.num_joints} joints, motion files use FLAME's "
                         f"{NUM_JOINTS} (global, neck, jaw, left eye, right eye)")
    arrays = _read(path)
    found, used = {}, set()
    for param, (keys, last) in MOTION_KEYS.items():
        present = [k for k in keys if k in arrays]
        if param == "eyes_pose":  # eyes_pose / eye_pose vs leye_pose + reye_pose
            present += [k for k in ("leye_pose", "reye_pose") if k in arrays and present]
        if len(present) > 1:
            raise MotionFileError(f"{path}: keys {present} both give the {param.replace('_', ' ')}; keep one")
        if not present:
            continue
        k = present[0]
        a = _numeric(path, k, arrays[k])
        want = f"[T,{last}]" if last else "[T,n]"
        if a.ndim != 2 or (last is not None and a.shape[1] != last) or a.shape[1] == 0:
            raise MotionFileError(f"{path}: key {k!r} expected shape {want}, got {list(a.shape)}")
        found[param] = (k, a)
        used.add(k)
    if "expression" not in found and not any(p in found for p in _POSE_PARAMS):
        names = [k for p in ("expression",) + _POSE_PARAMS for k in MOTION_KEYS[p][0]]
        raise MotionFileError(f"{path}: no expression or pose key; expected at least one of {names} "
                              f"(the file has {sorted(arrays)})")
    if ("leye_pose" in found) != ("reye_pose" in found):
        have, miss = ("leye_pose", "reye_pose") if "leye_pose" in found else ("reye_pose", "leye_pose")
        raise MotionFileError(f"{path}: key {have!r} without {miss!r} (give both eyes, or 'eyes_pose' [T,6])")
    first = next(iter(found.values()))
    T = first[1].shape[0]
    for k, a in found.values():
        if a.shape[0] != T:
            raise MotionFileError(f"{path}: key {k!r} has {a.shape[0]} frames but key {first[0]!r} has {T}")

    notes: list = []
    n_expr = model.n_expr if model is not None else (found["expression"][1].shape[1] if "expression" in found else 0)
    if "expression" in found:
        expr = _fit(found["expression"][1], n_expr, f"expression (key {found['expression'][0]!r})", path, notes)
    else:
        expr = np.zeros((T, n_expr))
    pose = np.zeros((T, NUM_JOINTS, 3))
    for j, param in enumerate(("rotation", "neck_pose", "jaw_pose")):
        if param in found:
            pose[:, j] = found[param][1]
    if "eyes_pose" in found:
        pose[:, 3:5] = found["eyes_pose"][1].reshape(T, 2, 3)
    elif "leye_pose" in found:
        pose[:, 3], pose[:, 4] = found["leye_pose"][1], found["reye_pose"][1]
    transl = found["translation"][1] if "translation" in found else np.zeros((T, 3))

    shape = None
    if "shape" in arrays:
        used.add("shape")
        shape = _numeric(path, "shape", arrays["shape"])
        if shape.ndim not in (1, 2) or shape.shape[-1] == 0 or (shape.ndim == 2 and shape.shape[0] != T):
            raise MotionFileError(f"{path}: key 'shape' expected shape [n] or [{T},n] (T={T}), got {list(shape.shape)}")
        if model is not None:
            shape = _fit(shape, model.n_shape, "shape (key 'shape')", path, notes)
    fps = None
    if "fps" in arrays:
        used.add("fps")
        f = arrays["fps"]
        ok = f.size == 1 and f.dtype != bool and (np.issubdtype(f.dtype, np.floating) or np.issubdtype(f.dtype, np.integer))
        fps = float(f.reshape(())) if ok else None
        if fps is None or not (math.isfinite(fps) and fps > 0):
            raise MotionFileError(f"{path}: key 'fps' expected one finite number > 0, got {f.reshape(-1)[:4]!r} "
                                  f"(shape {list(f.shape)}, dtype {f.dtype})")

    if dtype is None:
        dtype = model.dtype if model is not None else torch.float32
    if device is None:
        device = model.device if model is not None else "cpu"

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    return Motion(expression=t(expr), pose=t(pose.reshape(T, NUM_JOINTS * 3)), translation=t(transl),
                  shape=None if shape is None else t(shape), fps=fps,
                  source_keys={p: k for p, (k, _) in found.items()},
                  ignored_keys=tuple(sorted(set(arrays) - used)), notes=tuple(notes))


def _array(name: str, x, shapes: str) -> "np.ndarray | None":
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"save_motion: {name} expected a numeric array {shapes}, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"save_motion: {name} has non-finite values (NaN or Inf)")
    return a


def save_motion(path: "str | os.PathLike", expression=None, pose=None, translation=None, *, shape=None,
                fps: Optional[float] = None) -> None:
    """Write a motion ``.npz`` (atomically) that :func:`load_motion` and tracker tools read.

    Keys written: ``expr`` [T,n], ``rotation``, ``neck_pose``, ``jaw_pose`` [T,3], ``eyes_pose`` [T,6]
    (left eye then right eye) from ``pose``, ``translation`` [T,3], ``shape`` and ``fps`` when given;
    float32. A :class:`Motion` may be passed as ``expression`` (its fields are written).

    Args:
        expression: [T,n] (torch or numpy), or None (zeros, n = 0 is not written).
        pose: [T,15] or [T,5,3] axis-angle in FLAME's joint order, or None (zeros).
        translation: [T,3] or None.
        shape: [n_shape] or [T,n_shape] or None.
        fps: a finite number > 0, or None.

    Raises:
        ValueError / TypeError naming the argument (shapes, frame counts, NaN / Inf); MotionFileError
        when the folder does not exist.
    """
    if isinstance(expression, Motion):
        m = expression
        expression, pose, translation = m.expression, m.pose, m.translation
        shape = m.shape if shape is None else shape
        fps = m.fps if fps is None else fps
    e = _array("expression", expression, "[T,n]")
    p = _array("pose", pose, "[T,15]")
    tr = _array("translation", translation, "[T,3]")
    s = _array("shape", shape, "[n] or [T,n]")
    if e is None and p is None:
        raise ValueError("save_motion: give an expression [T,n] or a pose [T,15] (or both)")
    if e is not None and e.ndim != 2:
        raise ValueError(f"save_motion: expression expected shape [T,n], got {list(e.shape)}")
    if p is not None:
        if p.ndim == 3 and p.shape[1:] == (NUM_JOINTS, 3):
            p = p.reshape(p.shape[0], NUM_JOINTS * 3)
        if p.ndim != 2 or p.shape[1] != NUM_JOINTS * 3:
            raise ValueError(f"save_motion: pose expected shape [T,{NUM_JOINTS * 3}] or [T,{NUM_JOINTS},3], "
                             f"got {list(p.shape)}")
    T = (e if e is not None else p).shape[0]
    for name, a in (("expression", e), ("pose", p), ("translation", tr)):
        if a is not None and a.shape[0] != T:
            raise ValueError(f"save_motion: {name} has {a.shape[0]} frames, expected {T} (the other arguments')")
    if tr is not None and tr.shape != (T, 3):
        raise ValueError(f"save_motion: translation expected shape [{T},3], got {list(tr.shape)}")
    if s is not None and (s.ndim not in (1, 2) or (s.ndim == 2 and s.shape[0] != T)):
        raise ValueError(f"save_motion: shape expected shape [n] or [{T},n], got {list(s.shape)}")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or \
                not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"save_motion: fps expected a finite number > 0, got {fps!r}")
    if p is None:
        p = np.zeros((T, NUM_JOINTS * 3))
    p = p.reshape(T, NUM_JOINTS, 3)
    out = {"rotation": p[:, 0], "neck_pose": p[:, 1], "jaw_pose": p[:, 2], "eyes_pose": p[:, 3:5].reshape(T, 6)}
    if e is not None and e.shape[1] > 0:
        out["expr"] = e
    if tr is not None:
        out["translation"] = tr
    if s is not None:
        out["shape"] = s
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
    if fps is not None:
        out["fps"] = np.asarray(float(fps), dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write(path, buf.getvalue(), error=MotionFileError)
