"""Loads the compiled library (ffavatar_kernels._C) that registers ``torch.ops.ffavatar.*``.

Set ``FFAVATAR_EXT_PATH=/path/to/_C.<abi>.so`` to load a library built outside the package (dev
builds with plain CMake); otherwise the installed ``ffavatar_kernels._C`` module is imported. Either
way the library is loaded once, as the module ``ffavatar_kernels._C`` (a later
``import ffavatar_kernels._C`` gets the same module, so the ops are registered exactly once).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import torch  # noqa: F401  (torch's libraries are loaded before ours)

from . import _env

_MODULE = "ffavatar_kernels._C"
_loaded: bool | None = None
_error: str = ""
_module: ModuleType | None = None


def _load_from_path(path: str) -> ModuleType:
    """Load the extension at ``path`` as the module ``ffavatar_kernels._C`` (registers its ops)."""
    mod = sys.modules.get(_MODULE)
    if mod is not None:  # already loaded (from this path or the installed package): never twice
        return mod
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"FFAVATAR_EXT_PATH={path!r} is not a loadable extension module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return mod


def load() -> bool:
    """Load the compiled ops once; return whether they are available."""
    global _loaded, _error, _module
    if _loaded is not None:
        return _loaded
    path = _env.ext_path()
    try:
        _module = _load_from_path(path) if path else importlib.import_module(_MODULE)
        _loaded = True
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        _loaded, _error = False, f"{type(exc).__name__}: {exc}"
    return _loaded


def build_info() -> dict:
    """How the loaded library was built.

    Keys: ``loaded`` (bool), ``path`` (the library file); from the library: ``torch_version`` (the
    torch headers it was compiled against, e.g. ``"2.13.0"``), ``with_cuda`` (CUDA kernels compiled
    in), ``cuda_version`` (nvcc's version string, or None), ``cuda_architectures`` (e.g. ``"80;90"``,
    or ``""``), ``ops`` (names of the ``torch.ops.ffavatar`` ops with a compiled kernel). When the
    library is not available: ``{"loaded": False, "error": <why>}``.
    """
    if not load():
        return {"loaded": False, "error": _error}
    path = getattr(_module, "__file__", None)
    if not hasattr(_module, "build_info"):  # a library built before build_info existed
        return {"loaded": True, "path": path, "error": "the loaded library has no build_info(): rebuild it"}
    info = dict(_module.build_info())
    info.update(loaded=True, path=path)
    return info


def has_cuda_kernels() -> bool:
    """Whether the compiled library contains CUDA kernels (built against a CUDA torch with nvcc)."""
    return bool(build_info().get("with_cuda", False))


def require(op: str) -> None:
    """Raise a clear error if the compiled op ``op`` is missing."""
    if not load():
        raise RuntimeError(
            f"ffavatar_kernels: the compiled extension is not available, so {op} cannot run "
            f"({_error}). Install the package with `pip install --no-build-isolation .` against the "
            "torch you use (see README, 'Building').")
