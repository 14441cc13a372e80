"""FLAME parameter sequences: the procedural talking-head motion of the demo."""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["motion_script", "check_fps"]


def check_fps(fps, where: str) -> None:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise TypeError(f"{where}: fps expected a finite number > 0, got {type(fps).__name__} {fps!r}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{where}: fps expected a finite number > 0, got {fps}")


def motion_script(num_frames: int, n_shape: int = 300, n_expr: int = 100, *, num_joints: int = 5,
                  fps: float = 24.0, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic talking-head motion: expressions, jaw, eye saccades, head nod and turn.

    Args:
        num_frames: T.
        n_shape, n_expr: blendshape counts of the model (shape stays 0; S = n_shape + n_expr).
        num_joints: J (FLAME: global, neck, jaw, left eye, right eye).
        fps: frame rate the motion is timed for (a finite number > 0).

    Returns:
        betas [T,S] and pose [T,J*3] (axis-angle per joint).

    Raises:
        TypeError: ``fps`` is not a real number.
        ValueError: ``num_frames`` < 0, or ``fps`` is not finite and > 0.
    """
    if num_frames < 0:
        raise ValueError(f"motion_script: num_frames must be >= 0, got {num_frames}")
    check_fps(fps, "motion_script")
    t = torch.arange(num_frames, dtype=torch.float64) / fps                      # seconds
    S = n_shape + n_expr
    betas = torch.zeros(num_frames, S, dtype=torch.float64)
    if n_expr > 0:
        e = betas[:, n_shape:]
        amp = [1.2, 1.0, 1.5, 0.8, 1.0, 0.8, 1.0, 1.5, 1.0, 0.8]
        for k in range(min(n_expr, len(amp))):
            e[:, k] = amp[k] * torch.sin(2 * math.pi * (0.35 + 0.13 * k) * t + 1.3 * k).clamp_min(-0.3)
    pose = torch.zeros(num_frames, num_joints, 3, dtype=torch.float64)
    if num_joints >= 1:
        pose[:, 0, 1] = 0.10 * torch.sin(2 * math.pi * 0.25 * t)                   # slow body sway
    if num_joints >= 2:
        pose[:, 1, 0] = 0.18 * torch.sin(2 * math.pi * 0.5 * t + 0.4)              # nod
        pose[:, 1, 1] = 0.35 * torch.sin(2 * math.pi * 0.3 * t)                    # turn
        pose[:, 1, 2] = 0.08 * torch.sin(2 * math.pi * 0.4 * t + 1.0)              # tilt
    if num_joints >= 3:
        pose[:, 2, 0] = 0.22 * (0.5 - 0.5 * torch.cos(2 * math.pi * 0.9 * t))       # jaw open/close
    if num_joints >= 5:
        # saccades: hold a gaze target, jump to the next every 0.6 s
        k = torch.floor(t / 0.6)
        yaw = 0.35 * torch.sin(2.7 * k + 0.5)
        pitch = 0.18 * torch.sin(1.9 * k + 1.1)
        pose[:, 3, 0] = pose[:, 4, 0] = pitch
        pose[:, 3, 1] = pose[:, 4, 1] = yaw
    return (betas.to(dtype=dtype, device=device),
            pose.reshape(num_frames, num_joints * 3).to(dtype=dtype, device=device))
