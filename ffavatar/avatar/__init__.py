"""Avatars: the canonical Gaussians a reconstruction gives, with identity and input-view estimates."""
from .avatar import Avatar

__all__ = ["Avatar"]
