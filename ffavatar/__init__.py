"""ffavatar: the model layer over ``ffavatar_kernels`` -- FLAME model files, the built-in synthetic
head, surface subdivision, canonical Gaussians, animation and the ``ffavatar`` command line.

Importing this package does not import the kernels; rendering picks them when first needed.
"""
from .flame import FlameFileError, FlameModel, load_flame, save_flame_npz
from .synthetic import synthetic_head
from .subdivide import subdivide
from .gaussians import CanonicalGaussians, canonical_gaussians
from .camera import intrinsics, look_at, orbit
from .animate import Animator, motion_script, render_frames, select_backend

__version__ = "0.1.0"

__all__ = ["FlameModel", "FlameFileError", "load_flame", "save_flame_npz", "synthetic_head", "subdivide",
           "CanonicalGaussians", "canonical_gaussians", "intrinsics", "look_at", "orbit", "Animator",
           "motion_script", "render_frames", "select_backend", "__version__"]
