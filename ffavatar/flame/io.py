"""FLAME model files: loaders for ``.pkl`` and ``.npz`` files, and the ``.npz`` writer.

FLAME (Li et al. 2017) is licensed and may not be redistributed, so the library loads a user's own
``generic_model.pkl`` (FLAME 2020 / 2023) or an ``.npz`` export, and ships a procedural stand-in
with the same structure (:func:`ffavatar.flame.synthetic_head`).

File formats
------------
``.pkl`` -- the official Python-2 era pickle (read with ``encoding="latin1"``). Keys used:

==================  ==================================  ========================================
key                 shape / type                        meaning
==================  ==================================  ========================================
``v_template``      [V,3] float                         template (mean) mesh
``shapedirs``       [V,3,S] float (a chumpy ``Ch``)     shape then expression blendshapes
``posedirs``        [V,3,P] float, P=(J-1)*9             pose-corrective blendshapes
``J_regressor``     [J,V] ``scipy.sparse`` or dense      joint regressor
``weights``         [V,J] float                         linear-blend-skinning weights
``kintree_table``   [2,J] int                           row 0: parent of each joint (root 2**32-1)
``f``               [F,3] int                           triangles
==================  ==================================  ========================================

chumpy objects are unpickled *without* chumpy: a custom unpickler maps every ``chumpy.*`` class to a
stand-in that captures the pickled state and the array it holds (``state["x"]``). Other keys
(``J``, ``bs_style``, ``bs_type``, ...) are ignored.

``.npz`` -- the same keys and shapes as the pickle (``np.savez``), plus optional
``vertex_colors`` [V,3] in [0,1], ``n_shape`` and ``n_expr`` (scalars). ``posedirs`` may also be
stored in the smplx layout [P,V*3] and ``J_regressor`` as dense [J,V]. :func:`save_flame_npz`
writes this format.
"""
from __future__ import annotations

import numbers
import os
import pickle
from typing import Any

import numpy as np
import torch

from .model import FlameFileError, FlameModel

__all__ = ["load_flame", "save_flame_npz"]


# ---------------------------------------------------------------------------------------------
# chumpy-free unpickling
# ---------------------------------------------------------------------------------------------
class _ChumpyStandIn:
    """Captures a pickled chumpy object (any class in ``chumpy.*``) without importing chumpy."""

    def __new__(cls, *args, **kwargs):  # pickle protocol 2 calls cls.__new__(cls, *args)
        obj = object.__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def array(self, where: str) -> np.ndarray:
        st = self._state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[1], dict):  # (state, slotstate)
            st = {**(st[0] or {}), **st[1]}
        if isinstance(st, dict) and "x" in st:
            x = st["x"]
            return x.array(where) if isinstance(x, _ChumpyStandIn) else np.asarray(x)
        keys = sorted(st) if isinstance(st, dict) else type(st).__name__
        raise FlameFileError(f"{where}: a chumpy object without an array ('x' not in its state {keys})")


def _stand_in_class(module: str, name: str) -> type:
    return type(name, (_ChumpyStandIn,), {"__module__": module})


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in_class(module, name)
        return super().find_class(module, name)


def _to_numpy(value: Any, where: str) -> np.ndarray:
    if isinstance(value, _ChumpyStandIn):
        return value.array(where)
    if hasattr(value, "toarray") and callable(value.toarray):  # scipy.sparse
        return np.asarray(value.toarray())
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise FlameFileError(f"{where}: cannot convert a {type(value).__name__} to an array ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
_REQUIRED = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def _read_raw(path: str) -> dict:
    if not os.path.exists(path):
        raise FlameFileError(f"{path}: FLAME model file not found")
    if not os.path.isfile(path):
        raise FlameFileError(f"{path}: not a file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        with open(path, "rb") as fh:
            data = _FlameUnpickler(fh, encoding="latin1").load()
    except FlameFileError:
        raise
    except Exception as exc:
        kind = "npz archive" if ext == ".npz" else "pickle"
        raise FlameFileError(f"{path}: cannot read the FLAME {kind} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise FlameFileError(f"{path}: expected a dict of arrays, got a {type(data).__name__}")
    return data


def load_flame(path: "str | os.PathLike", *, n_shape: int | None = None, n_expr: int | None = None,
               dtype: torch.dtype = torch.float32) -> FlameModel:
    """Load a FLAME model from ``generic_model.pkl`` (FLAME 2020/2023) or an ``.npz`` export.

    Args:
        path: the ``.pkl`` or ``.npz`` file (see the module docstring for the keys).
        n_shape: number of shape components among the S blendshapes (default: the file's ``n_shape``,
            else ``min(300, S)``); the remaining S - n_shape are expression components.
        n_expr: number of expression components (default ``S - n_shape``); if given with n_shape
            their sum must be S.
        dtype: floating dtype of the returned tensors.

    Returns:
        A :class:`FlameModel` on the CPU (posedirs converted to the smplx [P,V*3] layout,
        J_regressor dense, parents int64 with -1 at the root).

    Raises:
        TypeError: ``n_shape`` or ``n_expr`` is not an int (or None).
        ValueError: ``n_shape`` or ``n_expr`` is negative, or their sum is not S.
        FlameFileError (a ValueError): the file is missing or unreadable, a key is missing, or an
        array has the wrong shape; the message names the file and the key.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"load_flame: dtype expected a floating dtype (a torch.dtype such as torch.float32), got {dtype!r}")
    for name, n in (("n_shape", n_shape), ("n_expr", n_expr)):
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"load_flame: {name} expected an int >= 0 or None, got {type(n).__name__} {n!r}")
        if n < 0:
            raise ValueError(f"load_flame: {name} expected an int >= 0 or None, got {n}")
    path = os.fspath(path)
    raw = _read_raw(path)
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise FlameFileError(f"{path}: missing key(s) {missing}; a FLAME model needs {list(_REQUIRED)}")
    arr = {k: _to_numpy(raw[k], f"{path}: key '{k}'") for k in _REQUIRED}
    for opt in ("vertex_colors", "n_shape", "n_expr"):
        if opt in raw and raw[opt] is not None:
            arr[opt] = _to_numpy(raw[opt], f"{path}: key '{opt}'")

    def bad(key: str, want: str) -> FlameFileError:
        return FlameFileError(f"{path}: key '{key}' expected shape {want}, got {list(arr[key].shape)}")

    vt = arr["v_template"]
    if vt.ndim != 2 or vt.shape[1] != 3 or vt.shape[0] == 0:
        raise bad("v_template", "[V,3]")
    V = vt.shape[0]
    kt = arr["kintree_table"]
    if kt.ndim != 2 or kt.shape[0] != 2 or kt.shape[1] == 0:
        raise bad("kintree_table", "[2,J]")
    J = kt.shape[1]
    parents = kt[0].astype(np.int64)
    parents[(parents < 0) | (parents >= J)] = -1  # root: 2**32-1 in the official file
    if parents[0] != -1 or np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, J)):
        raise FlameFileError(f"{path}: key 'kintree_table' row 0 must list parents with the root first "
                             f"and each parent before its child, got {kt[0].tolist()}")
    sd = arr["shapedirs"]
    if sd.ndim != 3 or sd.shape[:2] != (V, 3):
        raise bad("shapedirs", f"[{V},3,S]")
    S = sd.shape[2]
    P = (J - 1) * 9
    pd = arr["posedirs"]
    if pd.shape == (V, 3, P):
        pd = pd.reshape(V * 3, P).T
    elif pd.shape != (P, V * 3):
        raise bad("posedirs", f"[{V},3,{P}] (or [{P},{V * 3}])")
    jr = arr["J_regressor"]
    if jr.shape != (J, V):
        raise bad("J_regressor", f"[{J},{V}]")
    w = arr["weights"]
    if w.shape != (V, J):
        raise bad("weights", f"[{V},{J}]")
    f = arr["f"]
    if f.ndim != 2 or f.shape[1] != 3:
        raise bad("f", "[F,3]")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= V):
        raise FlameFileError(f"{path}: key 'f' has vertex indices outside [0,{V}): "
                             f"min {int(f.min())}, max {int(f.max())}")
    vc = arr.get("vertex_colors")
    if vc is not None and vc.shape != (V, 3):
        raise bad("vertex_colors", f"[{V},3]")

    if n_shape is None:
        n_shape = int(arr["n_shape"]) if "n_shape" in arr else (S - int(n_expr) if n_expr is not None else min(300, S))
    if n_expr is None:
        n_expr = int(arr["n_expr"]) if "n_expr" in arr and n_shape + int(arr["n_expr"]) == S else S - n_shape
    if n_shape < 0 or n_expr < 0 or n_shape + n_expr != S:
        raise ValueError(f"load_flame: n_shape + n_expr must equal S={S} (shapedirs of {path}), "
                         f"got n_shape={n_shape}, n_expr={n_expr}")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(dtype)

    return FlameModel(
        v_template=t(vt), shapedirs=t(sd), posedirs=t(pd), J_regressor=t(jr),
        parents=torch.from_numpy(parents), lbs_weights=t(w), faces=torch.from_numpy(np.ascontiguousarray(f)),
        vertex_colors=None if vc is None else t(vc), n_shape=int(n_shape), n_expr=int(n_expr))


def _np(t: torch.Tensor) -> np.ndarray:
    """Detached CPU numpy copy; floating dtypes other than float64 become float32 (numpy has no bf16)."""
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t.numpy()


def save_flame_npz(model: FlameModel, path: "str | os.PathLike") -> None:
    """Write ``model`` as an ``.npz`` in the pickle's key layout (readable by :func:`load_flame`).

    Writes exactly ``path`` (no ``.npz`` is appended, unlike ``np.savez`` given a name; note that
    :func:`load_flame` picks the format by the ``.npz`` extension). Tensors are detached and copied
    to the CPU; float64 is kept, every other floating dtype (float32, float16, bfloat16) is stored
    as float32.
    """
    V, J = model.num_vertices, model.num_joints
    P = (J - 1) * 9
    parents = _np(model.parents).astype(np.int64).copy()
    kintree = np.stack([np.where(parents < 0, 2**32 - 1, parents), np.arange(J)]).astype(np.int64)
    out = dict(
        v_template=_np(model.v_template), shapedirs=_np(model.shapedirs),
        posedirs=_np(model.posedirs).T.reshape(V, 3, P), J_regressor=_np(model.J_regressor),
        weights=_np(model.lbs_weights), kintree_table=kintree, f=_np(model.faces).astype(np.int64),
        n_shape=np.int64(model.n_shape), n_expr=np.int64(model.n_expr))
    if model.vertex_colors is not None:
        out["vertex_colors"] = _np(model.vertex_colors)
    with open(os.fspath(path), "wb") as fh:
        np.savez(fh, **out)
