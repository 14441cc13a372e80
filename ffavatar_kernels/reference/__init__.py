"""Pure-PyTorch reference twins of the kernel ops (differentiable, any device), one module per op
with the op's name: tests and benchmarks import them; nothing redefines them. ``rotations`` is the
one quaternion <-> matrix implementation."""
from . import flame_lbs  # noqa: F401  (module: reference.flame_lbs.flame_lbs / .skin_gaussians are the twins)
from . import rasterize  # noqa: F401  (module; reference.rasterize.rasterize is the twin)
from . import rotations  # noqa: F401
from .cross_attention import cross_attention  # noqa: F401
