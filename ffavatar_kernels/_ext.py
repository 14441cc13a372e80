"""Loads the compiled library (ffavatar_kernels._C) that registers ``torch.ops.ffavatar.*``.

Set ``FFAVATAR_EXT_PATH=/path/to/_C.<abi>.so`` to load a library built outside the package (dev
builds with plain CMake); otherwise the installed ``ffavatar_kernels._C`` module is imported.
"""
from __future__ import annotations

import importlib
import os

import torch

_loaded: bool | None = None
_error: str = ""


def load() -> bool:
    """Load the compiled ops once; return whether they are available."""
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    path = os.environ.get("FFAVATAR_EXT_PATH")
    try:
        if path:
            torch.ops.load_library(path)
        else:
            importlib.import_module("ffavatar_kernels._C")
        _loaded = True
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        _loaded, _error = False, f"{type(exc).__name__}: {exc}"
    return _loaded


def has_cuda_kernels() -> bool:
    """Whether the compiled library contains CUDA kernels (built against a CUDA torch with nvcc)."""
    if not load():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("ffavatar::flame_lbs", "CUDA") or \
        torch._C._dispatch_has_kernel_for_dispatch_key("ffavatar::rasterize_render", "CUDA")


def require(op: str) -> None:
    """Raise a clear error if the compiled op ``op`` is missing."""
    if not load():
        raise RuntimeError(
            f"ffavatar_kernels: the compiled extension is not available, so {op} cannot run "
            f"({_error}). Install the package with `pip install --no-build-isolation .` against the "
            "torch you use (see README, 'Building').")
