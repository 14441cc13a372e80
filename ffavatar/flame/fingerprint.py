"""FLAME model fingerprints: which head model an avatar was built on.

An avatar's Gaussians are bound to one FLAME-structured model (anchor vertices, blendshapes,
skinning weights); posing it with another model gives garbage. :func:`flame_fingerprint` is a
sha256 over the model's tensors (``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``,
``parents``, ``lbs_weights``, ``faces``) and its ``n_shape`` / ``n_expr`` split, written as
``"sha256:<64 hex digits>"``. Floating tensors are hashed as little-endian float32 and integer ones
as little-endian int64 (each with its name and shape), so the fingerprint does not depend on the
model's device or floating dtype: a float64 copy of a model has the fingerprint of the float32 one.
The synthetic head gets its own fingerprint the same way (:func:`synthetic_fingerprint`, cached).
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from .model import FlameModel

__all__ = ["flame_fingerprint", "synthetic_fingerprint", "FINGERPRINT_TENSORS"]

FINGERPRINT_TENSORS = ("v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights", "faces")


def flame_fingerprint(model: FlameModel) -> str:
    """``"sha256:<hex>"`` over ``model``'s tensors (see the module docstring).

    The value is cached on the model object and recomputed when one of its tensors is replaced or
    modified in place (tensor identity and version counter), so calling it per frame is cheap. The
    first call on an accelerator copies the tensors to the host once.
    """
    if not isinstance(model, FlameModel):
        raise TypeError(f"flame_fingerprint: model expected a FlameModel, got {type(model).__name__}")
    tensors = tuple(getattr(model, n) for n in FINGERPRINT_TENSORS)
    key = tuple((id(t), _version(t)) for t in tensors) + (model.n_shape, model.n_expr)
    cached = getattr(model, "_fingerprint_cache", None)
    cacheable = all(v >= 0 for _, v in key[:-2])  # (inference tensors: no version counter, no cache)
    if cacheable and cached is not None and cached[0] == key and all(a is b for a, b in zip(cached[1], tensors)):
        return cached[2]
    h = hashlib.sha256()
    h.update(f"ffavatar-flame-fingerprint-v1 n_shape={int(model.n_shape)} n_expr={int(model.n_expr)}\n".encode())
    for name, t in zip(FINGERPRINT_TENSORS, tensors):
        t = t.detach()
        kind = "f4" if t.is_floating_point() else "i8"
        a = t.to("cpu", torch.float32 if kind == "f4" else torch.int64).contiguous().numpy()
        a = a.astype("<" + kind, copy=False)
        h.update(f"{name} {kind} {list(a.shape)}\n".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    fp = "sha256:" + h.hexdigest()
    if cacheable:
        model._fingerprint_cache = (key, tensors, fp)
    return fp


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


@functools.lru_cache(maxsize=1)
def synthetic_fingerprint() -> str:
    """The fingerprint of :func:`ffavatar.flame.synthetic_head` (deterministic; computed once)."""
    from .synthetic import synthetic_head
    return flame_fingerprint(synthetic_head())
