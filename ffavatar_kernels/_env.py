"""The library's environment switches, in one place (the C++ ones mirror ``csrc/common/env.h``).

One lifetime for all of them: read at every call that uses them, so a process can toggle them
(tests, A/B scripts) and nothing is cached at import. A flag is on when the variable is set,
non-empty and not "0".

=========================  ======  =======================================================================
variable                   read    effect
=========================  ======  =======================================================================
FFAVATAR_EXT_PATH          Python  load this compiled library instead of ``ffavatar_kernels._C`` (dev
                                   builds); its one use is the library's one load
FFAVATAR_NO_FUSED          Python  ``skin_gaussians`` for one frame on CUDA: the three-op path instead of
                                   the fused ``flame_skin_gaussians``
FFAVATAR_ATTN_F32_DOT      Python  fp32 attention dots: ``tf32x3`` (default) or ``ieee`` (exact FMA)
FFAVATAR_ATTN_AUTOTUNE     Python  attention autotuning: ``auto`` (big problems), ``0`` never, ``1`` always
FFAVATAR_NO_PDL            C++     LBS forward: plain launches instead of programmatic dependent launch
FFAVATAR_BIN_SYNC          C++     rasterize bin: always the exact way (host waits for the count)
FFAVATAR_NO_SPLIT          C++     rasterize render: every tile in one block (no chunked heavy tiles)
FFAVATAR_NO_BIN_GRAPH      C++     rasterize bin: launch the kernels directly (no cached CUDA graphs)
FFAVATAR_BIN_CUB_SORT      C++     rasterize bin: cub::DeviceRadixSort instead of our onesweep sorts
=========================  ======  =======================================================================

``TRITON_INTERPRET`` is Triton's own switch, which Triton reads when it is imported; ours is read at
that same moment (``triton/cross_attention.py``): it decides whether CPU tensors run the
interpreted Triton kernels.
"""
from __future__ import annotations

import os

__all__ = ["flag", "ext_path", "no_fused", "attn_f32_dot", "attn_autotune", "triton_interpret", "SWITCHES"]

SWITCHES = ("FFAVATAR_EXT_PATH", "FFAVATAR_NO_FUSED", "FFAVATAR_ATTN_F32_DOT", "FFAVATAR_ATTN_AUTOTUNE",
            "FFAVATAR_NO_PDL", "FFAVATAR_BIN_SYNC", "FFAVATAR_NO_SPLIT", "FFAVATAR_NO_BIN_GRAPH",
            "FFAVATAR_BIN_CUB_SORT")


def flag(name: str) -> bool:
    """Whether the switch ``name`` is on (set, non-empty, not "0")."""
    return os.environ.get(name, "") not in ("", "0")


def ext_path() -> "str | None":
    return os.environ.get("FFAVATAR_EXT_PATH") or None


def no_fused() -> bool:
    return flag("FFAVATAR_NO_FUSED")


def attn_f32_dot() -> str:
    mode = os.environ.get("FFAVATAR_ATTN_F32_DOT", "") or "tf32x3"
    if mode not in ("tf32x3", "ieee"):
        raise ValueError(f"FFAVATAR_ATTN_F32_DOT: expected 'tf32x3' or 'ieee', got {mode!r}")
    return mode


def attn_autotune() -> str:
    mode = os.environ.get("FFAVATAR_ATTN_AUTOTUNE", "") or "auto"
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"FFAVATAR_ATTN_AUTOTUNE: expected 'auto', '0' or '1', got {mode!r}")
    return mode


def triton_interpret() -> bool:
    return flag("TRITON_INTERPRET")
