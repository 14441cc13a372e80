"""Avatars: canonical Gaussians bound to a FLAME model, their identity and residuals; rendering,
posing, the animation engine (CUDA graphs), personalization, ``.ffavatar`` files and 3DGS ``.ply``
export."""
from .avatar import Avatar, FlameMismatchError, load_avatar
from .engine import AnimationEngine, front_camera
from .files import AvatarFileError, save_avatar
from .personalize import History, Views, personalize
from .ply import PlyFileError, SplatGaussians, load_ply, write_ply
from .residuals import EffectiveGaussians, Residuals
from .ssim import l1_ssim_loss, psnr, ssim

__all__ = ["Avatar", "AnimationEngine", "front_camera", "Residuals", "EffectiveGaussians", "FlameMismatchError", "AvatarFileError", "save_avatar",
           "load_avatar", "PlyFileError", "SplatGaussians", "load_ply", "write_ply", "personalize", "History",
           "Views", "ssim", "l1_ssim_loss", "psnr"]
