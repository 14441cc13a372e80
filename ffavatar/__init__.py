"""ffavatar: the model layer over ``ffavatar_kernels``.

Subpackages, each importing only those below it (cli -> render -> flame -> geometry ->
ffavatar_kernels): ``flame`` (FLAME model files, the built-in synthetic head, canonical Gaussians,
motion), ``geometry`` (cameras, subdivision, rotations), ``render`` (backend choice, shading, frames,
video), ``cli`` (the ``ffavatar`` command). The names below are the stable top-level API.
"""
from ._version import __version__
from .flame import (CanonicalGaussians, FlameFileError, FlameModel, canonical_gaussians, load_flame, motion_script,
                    save_flame_npz, synthetic_head)
from .geometry import intrinsics, look_at, orbit, subdivide
from .render import Animator, render_frames, select_backend

__all__ = ["FlameModel", "FlameFileError", "load_flame", "save_flame_npz", "synthetic_head", "subdivide",
           "CanonicalGaussians", "canonical_gaussians", "intrinsics", "look_at", "orbit", "Animator",
           "motion_script", "render_frames", "select_backend", "__version__"]
