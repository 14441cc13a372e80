"""Rendering of animated heads: backend choice (compiled kernels or reference twins), shading,
batched frame rendering, the demo's sequence renderer and video files."""
from .animator import Animator
from .backend import Backend, select_backend
from .frames import render_frames
from .shading import shade
from .video import VideoWriter

__all__ = ["Animator", "Backend", "select_backend", "render_frames", "shade", "VideoWriter"]
