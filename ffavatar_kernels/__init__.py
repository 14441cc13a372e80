"""ffavatar_kernels: GPU kernels for feed-forward 3D Gaussian head avatars.

Public ops (each a registered torch op with autograd, a CPU path and a pure-PyTorch reference twin
in ``ffavatar_kernels.reference``):

- :func:`flame_lbs` -- fused FLAME/SMPL-style linear blend skinning (smplx ``lbs`` contract).
- :func:`skin_gaussians` -- skin Gaussians anchored to the subdivided FLAME surface.
- :func:`rasterize` -- tile-based 3D Gaussian splatting (``gsplat.rasterization`` contract).
- :func:`cross_attention` -- flash (cross-)attention in Triton, dense and varlen key/value banks.

Each accepts CuPy arrays too (``interop``) and is an NVTX range under Nsight (``profiling``).
``build_info()`` tells how the compiled library was built; ``has_kernel(op, device)`` whether this
build has kernels for a device.
"""
from . import _ext
from ._ext import build_info, has_cuda_kernels
from .cross_attention import cross_attention
from .cross_attention import register as _register_cross_attention
from .flame_lbs import flame_lbs, skin_gaussians
from .flame_lbs import register as _register_flame_lbs
from .rasterize import rasterize
from .rasterize import register as _register_rasterize
from .registry import has_kernel

# The op anatomy: load the library once, then each op module's register() once.
_ext.load()
for _register in (_register_flame_lbs, _register_rasterize, _register_cross_attention):
    _register()
del _register

__all__ = ["flame_lbs", "skin_gaussians", "rasterize", "cross_attention", "build_info", "has_cuda_kernels",
           "has_kernel"]
__version__ = "0.1.0"
