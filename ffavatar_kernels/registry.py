"""Which public op runs on which compiled ops, and whether this build has kernels for a device.

The public ops (``flame_lbs``, ``skin_gaussians``, ``rasterize``, ``cross_attention``) are the names
users and the model layer ask about; the compiled ``torch.ops.ffavatar.*`` ops behind them are an
implementation detail listed here once.
"""
from __future__ import annotations

import torch

from . import _ext

__all__ = ["OPS", "has_kernel"]

# public op -> the compiled torch.ops.ffavatar ops it needs (cross_attention is Triton + a CPU path)
OPS: dict[str, tuple[str, ...]] = {
    "flame_lbs": ("flame_lbs_joints", "flame_lbs", "flame_lbs_joints_bwd", "flame_lbs_bwd"),
    "skin_gaussians": ("flame_lbs_joints", "flame_lbs", "skin_gaussians", "skin_gaussians_bwd"),
    "rasterize": ("rasterize_project", "rasterize_bin", "rasterize_render", "rasterize_project_bwd",
                  "rasterize_render_bwd"),
    "cross_attention": (),
}


def has_kernel(op: str, device: "torch.device | str") -> bool:
    """Whether the public op ``op`` has kernels for ``device`` in this build.

    Args:
        op: one of :data:`OPS` (``"flame_lbs"``, ``"skin_gaussians"``, ``"rasterize"``,
            ``"cross_attention"``).
        device: ``"cpu"``, ``"cuda"`` or a torch.device.

    Raises:
        ValueError: ``op`` is not a public op (the message lists them).
    """
    if op not in OPS:
        raise ValueError(f"has_kernel: op expected one of {sorted(OPS)}, got {op!r}")
    kind = torch.device(device).type
    if op == "cross_attention":  # exact CPU path always; Triton kernels on CUDA
        if kind != "cuda":
            return kind == "cpu"
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    info = _ext.build_info()
    if not info.get("loaded"):
        return False
    built = info.get("ops")
    if built is not None and not all(name in built for name in OPS[op]):
        return False  # a partial build (FFAVATAR_OPS): schemas without kernels
    if kind == "cpu":
        return True
    return kind == "cuda" and bool(info.get("with_cuda"))
