"""Argument checks shared by the public kernel API: clear errors naming the argument.

Shape specs are tuples whose entries are ints (exact), None (any size) or strings (named sizes that
must agree across the arguments of one call, e.g. ``("N", 3)`` for means and ``("N", 4)`` for quats).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

ShapeSpec = Sequence["int | str | None"]


def _fmt(spec: ShapeSpec) -> str:
    return "[" + ",".join("*" if s is None else str(s) for s in spec) + "]"


def check_tensor(
    name: str,
    t,
    shape: ShapeSpec | None = None,
    dtype: "torch.dtype | Iterable[torch.dtype] | None" = None,
    device: "torch.device | None" = None,
    sizes: "dict[str, int] | None" = None,
) -> torch.Tensor:
    """Check one tensor argument; return it. ``sizes`` collects named dimensions across calls."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        if t.dim() != len(shape):
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {list(t.shape)}")
        for i, (want, got) in enumerate(zip(shape, t.shape)):
            if want is None:
                continue
            if isinstance(want, str):
                if sizes is None:
                    continue
                if want in sizes and sizes[want] != got:
                    raise ValueError(
                        f"{name}: dim {i} ({want}) is {got}, but another argument fixed {want}={sizes[want]}; "
                        f"expected shape {_fmt(shape)}, got {list(t.shape)}")
                sizes.setdefault(want, got)
            elif want != got:
                raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {list(t.shape)}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            names = " or ".join(str(d).replace("torch.", "") for d in allowed)
            raise TypeError(f"{name}: expected dtype {names}, got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    return t


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; return it."""
    devs = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    first = next(iter(devs.values()))
    for k, d in devs.items():
        if d != first:
            listing = ", ".join(f"{n} on {dv}" for n, dv in devs.items())
            raise ValueError(f"all tensors must be on one device, got {listing}")
    return first


def check_finite(name: str, t: torch.Tensor) -> None:
    """Reject NaN/Inf (a host sync: use only on small, host-visible or debug paths)."""
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or Inf")
