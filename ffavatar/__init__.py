"""ffavatar: the model layer over ``ffavatar_kernels``.

Subpackages, each importing only those below it (cli -> nn -> avatar -> render -> flame -> geometry
-> ffavatar_kernels): ``flame`` (FLAME model files, the built-in synthetic head, canonical Gaussians,
motion), ``geometry`` (cameras, subdivision, rotations), ``render`` (backend choice, shading, frames,
video), ``avatar`` (Avatar), ``nn`` (the FFAvatar network: ``FFAvatarModel.reconstruct``), ``cli``
(the ``ffavatar`` command). The names below are the stable top-level API.
"""
from ._version import __version__
from .flame import (CanonicalGaussians, FlameFileError, FlameModel, Motion, MotionFileError, canonical_gaussians,
                    flame_fingerprint, load_flame, load_motion, motion_script, save_flame_npz, save_motion,
                    synthetic_head)
from .geometry import intrinsics, look_at, orbit, subdivide
from .avatar import Avatar, AvatarFileError, FlameMismatchError, PlyFileError, Residuals, load_avatar, load_ply
from .render import Animator, render_frames, select_backend

_NN = ("FFAvatarModel", "Preset", "get_preset", "count_parameters", "EncoderWeightsError", "use_sdpa")


def __getattr__(name: str):
    """The network's names load on first use (``import ffavatar`` stays light for the CLI)."""
    if name in _NN:
        from . import nn
        return getattr(nn, name)
    raise AttributeError(f"module 'ffavatar' has no attribute {name!r}")

__all__ = ["FlameModel", "FlameFileError", "load_flame", "save_flame_npz", "synthetic_head", "subdivide",
           "CanonicalGaussians", "canonical_gaussians", "intrinsics", "look_at", "orbit", "Animator",
           "motion_script", "render_frames", "select_backend", "Avatar", "AvatarFileError", "FlameMismatchError", "PlyFileError",
           "Residuals", "load_avatar", "load_ply", "Motion", "MotionFileError", "load_motion", "save_motion",
           "flame_fingerprint", *_NN, "__version__"]
