"""Avatars: canonical Gaussians bound to a FLAME model, their identity and residuals; rendering,
posing, ``.ffavatar`` files and 3DGS ``.ply`` export."""
from .avatar import Avatar, EffectiveGaussians, FlameMismatchError, Residuals, load_avatar
from .files import AvatarFileError, save_avatar
from .ply import PlyFileError, SplatGaussians, load_ply, write_ply

__all__ = ["Avatar", "Residuals", "EffectiveGaussians", "FlameMismatchError", "AvatarFileError", "save_avatar",
           "load_avatar", "PlyFileError", "SplatGaussians", "load_ply", "write_ply"]
