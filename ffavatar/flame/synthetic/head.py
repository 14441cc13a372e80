"""The synthetic head as a :class:`~ffavatar.flame.model.FlameModel`: layout + rig, built once, cached."""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..model import FlameModel
from .layout import HeadLayout, build_layout
from .rig import build_rig

__all__ = ["synthetic_head", "synthetic_layout"]


@functools.lru_cache(maxsize=1)
def _build_arrays() -> dict:
    lay = build_layout()
    rig = build_rig(lay)
    return {"layout": lay, **rig}


def synthetic_head(dtype: torch.dtype = torch.float32, device: "torch.device | str" = "cpu") -> FlameModel:
    """The procedural FLAME-structured head (deterministic; built once and cached).

    Args:
        dtype: floating dtype of the returned tensors.
        device: device of the returned tensors.

    Returns:
        A fresh :class:`FlameModel` (V=5023, J=5, 300 shape + 100 expression components, 36 pose
        correctives, vertex colors); mutating it does not affect later calls.
    """
    a = _build_arrays()

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype, device=device)

    return FlameModel(
        v_template=t(a["layout"].verts), shapedirs=t(a["shapedirs"]), posedirs=t(a["posedirs"]),
        J_regressor=t(a["J_regressor"]), parents=torch.tensor([-1, 0, 1, 1, 1], dtype=torch.int64, device=device),
        lbs_weights=t(a["lbs_weights"]), faces=torch.tensor(a["layout"].faces, device=device),
        vertex_colors=t(a["vertex_colors"]), n_shape=300, n_expr=100)


def synthetic_layout() -> HeadLayout:
    """Index sets of the synthetic head (which vertices are lips, eyes, cavity, ...), for tests."""
    return _build_arrays()["layout"]
