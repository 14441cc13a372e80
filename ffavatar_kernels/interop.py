"""CuPy interop: the public ops take CuPy arrays (zero-copy through DLPack) and return CuPy arrays
when given them.

A call whose arguments contain a ``cupy.ndarray`` has every such array converted with
``torch.from_dlpack`` (same memory, same device), runs the op, and converts every tensor of the
result (tuples, lists and dicts included) back with ``cupy.from_dlpack``. Gradients do not flow
through CuPy arrays (use torch tensors for autograd). The check costs one ``sys.modules`` lookup
when CuPy was never imported.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import torch

__all__ = ["accepts_cupy", "to_torch", "from_torch"]

F = TypeVar("F", bound=Callable)


def to_torch(x, cupy):
    """``x`` as a torch tensor if it is a CuPy array (zero-copy), else ``x``."""
    return torch.from_dlpack(x) if isinstance(x, cupy.ndarray) else x


def from_torch(x, cupy):
    """Every tensor in ``x`` (nested tuples / lists / dicts) as a CuPy array (zero-copy)."""
    if isinstance(x, torch.Tensor):
        return cupy.from_dlpack(x.detach())
    if isinstance(x, (tuple, list)):
        return type(x)(from_torch(v, cupy) for v in x)
    if isinstance(x, dict):
        return {k: from_torch(v, cupy) for k, v in x.items()}
    return x


def accepts_cupy(fn: F) -> F:
    """Decorator of a public op: CuPy arrays in -> torch tensors -> the op -> CuPy arrays out."""
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        cupy = sys.modules.get("cupy")
        if cupy is not None and (any(isinstance(a, cupy.ndarray) for a in args)
                                 or any(isinstance(v, cupy.ndarray) for v in kwargs.values())):
            args = tuple(to_torch(a, cupy) for a in args)
            kwargs = {k: to_torch(v, cupy) for k, v in kwargs.items()}
            return from_torch(fn(*args, **kwargs), cupy)
        return fn(*args, **kwargs)
    return inner  # type: ignore[return-value]
