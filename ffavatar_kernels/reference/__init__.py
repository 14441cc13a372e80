"""Pure-PyTorch reference twins of the kernel ops (differentiable, any device): tests and
benchmarks import them; nothing redefines them."""
from .attention import cross_attention  # noqa: F401
from . import lbs  # noqa: F401
from . import rasterize  # noqa: F401  (module; reference.rasterize.rasterize is the twin)
