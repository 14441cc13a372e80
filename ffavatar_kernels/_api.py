"""The public entry point of every op (DEVELOPING.md, "Op anatomy"): ``@public_op("name")`` gives the
op its NVTX range (only with a profiler attached) and CuPy interop (only when CuPy is imported)."""
from __future__ import annotations

from typing import Callable, TypeVar

from .interop import accepts_cupy
from .profiling import traced

F = TypeVar("F", bound=Callable)


def public_op(name: str) -> Callable[[F], F]:
    """Decorator of the public function of op ``name`` (``ffavatar_kernels.<name>``)."""
    def wrap(fn: F) -> F:
        return traced(f"ffavatar_kernels.{name}")(accepts_cupy(fn))
    return wrap
