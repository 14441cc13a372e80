"""The demo's sequence renderer: a head, its Gaussians, an orbiting camera and a backend."""
from __future__ import annotations

import numbers

import torch

from ..flame import CanonicalGaussians, FlameModel
from ..flame.motion import check_fps, motion_script
from ..geometry.cameras import intrinsics, orbit
from .backend import Backend, select_backend
from .frames import render_frames

__all__ = ["Animator"]


class Animator:
    """Holds a head, its Gaussians, a camera path and a backend; renders frame batches.

    Args:
        model: FLAME-structured head (e.g. :func:`ffavatar.flame.synthetic_head`).
        gaussians: canonical Gaussians of ``model``.
        size: image width = height in pixels.
        device: rendering device.
        backend: default :func:`select_backend` for the device.
        fov_y_deg: vertical field of view of the camera.
        fps: frame rate the motion is timed for (passed to :func:`motion_script`).
    """

    def __init__(self, model: FlameModel, gaussians: CanonicalGaussians, size: int, device="cpu",
                 backend: Backend | None = None, fov_y_deg: float = 22.0, fps: float = 24.0):
        check_fps(fps, "Animator")
        self.fps = float(fps)
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32)
        self.gaussians = gaussians.to(self.device, torch.float32)
        self.size = int(size)
        self.backend = backend or select_backend(self.device)
        self.K = intrinsics(self.size, self.size, fov_y_deg, device=self.device)

    def render_sequence(self, num_frames: int, batch: int = 8):
        """Yield ([b,H,W,3] float images in [0,1]) batches of the demo animation, in order.

        The arguments are checked when this is called (not at the first ``next``): ``batch`` must be
        an int >= 1 (``TypeError``/``ValueError`` naming ``batch``).
        """
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral):
            raise TypeError(f"Animator.render_sequence: batch expected an int >= 1, got {type(batch).__name__}")
        if batch < 1:
            raise ValueError(f"Animator.render_sequence: batch expected an int >= 1, got {batch}")
        betas, pose = motion_script(num_frames, self.model.n_shape, self.model.n_expr,
                                    num_joints=self.model.num_joints, fps=self.fps, device=self.device)
        return self._batches(num_frames, int(batch), betas, pose)

    def _batches(self, num_frames: int, batch: int, betas: torch.Tensor, pose: torch.Tensor):
        views = orbit(num_frames, device=self.device)
        # one avatar, one shape (motion_script keeps the shape coefficients fixed): the expression-only
        # fast path, its shaped template computed once per sequence
        if num_frames == 0:
            return
        n = self.model.n_shape
        with torch.no_grad():
            args = self.model.expression_lbs_args(betas[0, :n])
        expr = betas[:, n:].contiguous()                           # [T,n_expr]
        for s in range(0, num_frames, batch):
            e = min(num_frames, s + batch)
            with torch.no_grad():
                yield render_frames(self.model, self.gaussians, expr[s:e], pose[s:e], views[s:e], self.K,
                                    self.size, self.size, backend=self.backend, lbs_args=args)
