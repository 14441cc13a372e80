"""ffavatar_kernels: GPU kernels for feed-forward 3D Gaussian head avatars.

Public ops (each a registered torch op with autograd, a CPU path and a pure-PyTorch reference twin
in ``ffavatar_kernels.reference``):

- :func:`flame_lbs` -- fused FLAME/SMPL-style linear blend skinning (smplx ``lbs`` contract).
- :func:`skin_gaussians` -- skin Gaussians anchored to the subdivided FLAME surface.
- :func:`rasterize` -- tile-based 3D Gaussian splatting (``gsplat.rasterization`` contract).
- :func:`cross_attention` -- flash (cross-)attention in Triton, dense and varlen key/value banks.
"""
from . import _ext

_ext.load()

from .flame_lbs import flame_lbs, skin_gaussians  # noqa: E402
from .rasterize import rasterize  # noqa: E402
from .cross_attention import cross_attention  # noqa: E402

__all__ = ["flame_lbs", "skin_gaussians", "rasterize", "cross_attention"]
__version__ = "0.1.0"
