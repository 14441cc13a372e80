"""NVTX ranges for Nsight timelines: every public op call and every model-layer stage is a named
range (domain ``ffavatar``), so a user's timeline reads as our pipeline.

Zero cost without a profiler: NVTX is consumed only by a tool injected into the process (Nsight
Systems and Nsight Compute set ``NVTX_INJECTION64_PATH`` when they launch it), and that is decided
at import. Without one, :func:`traced` returns the function itself (no wrapper at all) and
:func:`nvtx_range` returns one shared no-op context manager. With one, the ranges come from the
``nvtx`` package (falling back to ``torch.cuda.nvtx`` where the package is missing).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, TypeVar

__all__ = ["PROFILER_ATTACHED", "nvtx_range", "traced"]

PROFILER_ATTACHED: bool = bool(os.environ.get("NVTX_INJECTION64_PATH") or os.environ.get("NVTX_INJECTION32_PATH"))
DOMAIN = "ffavatar"

_NULL = contextlib.nullcontext()
F = TypeVar("F", bound=Callable)


def _annotate():
    try:
        import nvtx
        return lambda name: nvtx.annotate(name, domain=DOMAIN)
    except ImportError:  # the package is a dependency, but a bare GPU box may lack it
        import torch

        @contextlib.contextmanager
        def rng(name):
            torch.cuda.nvtx.range_push(name)
            try:
                yield
            finally:
                torch.cuda.nvtx.range_pop()
        return rng


_ANNOTATE = _annotate() if PROFILER_ATTACHED else None


def nvtx_range(name: str):
    """A context manager marking ``name`` on the Nsight timeline (a shared no-op without a profiler)."""
    return _ANNOTATE(name) if _ANNOTATE is not None else _NULL


def traced(name: str) -> Callable[[F], F]:
    """Decorator: calls of the function are the NVTX range ``name``; without a profiler, the function
    is returned unchanged (no per-call cost)."""
    def wrap(fn: F) -> F:
        if _ANNOTATE is None:
            return fn

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with _ANNOTATE(name):
                return fn(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap
