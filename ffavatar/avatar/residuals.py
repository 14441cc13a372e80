"""Per-Gaussian residuals of an avatar (what personalization fits) and the effective Gaussians they
give; :class:`~ffavatar.avatar.avatar.Avatar` applies them, :mod:`ffavatar.avatar.personalize` fits them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["Residuals", "EffectiveGaussians", "axis_angle_to_quat"]


@dataclass
class Residuals:
    """Per-Gaussian corrections (personalization); all zeros leave the avatar exactly as it is.

    Attributes (N Gaussians), each applied by :meth:`Avatar.effective`:
        offsets:   [N,3] metres, added to the offsets.
        rotations: [N,3] axis-angle (radians); rotation ``R(r) @ R(quat)`` in the canonical frame.
        scales:    [N,3] log factors: ``scales * exp(r)``.
        opacities: [N] logit shifts: ``sigmoid(logit(opacity) + r)`` (exact for opacities 0 and 1).
        colors:    [N,3] added to the RGB colours, clamped to [0,1].
    """
    offsets: torch.Tensor
    rotations: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor

    @classmethod
    def zeros(cls, n: int, dtype=torch.float32, device=None) -> "Residuals":
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return cls(offsets=z(n, 3), rotations=z(n, 3), scales=z(n, 3), opacities=z(n), colors=z(n, 3))

    def tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def map(self, fn) -> "Residuals":
        return Residuals(**{k: fn(v) for k, v in self.tensors().items()})


class EffectiveGaussians(NamedTuple):
    """The canonical Gaussians with the residuals applied (what posing and rendering use)."""
    anchor_idx: torch.Tensor      # [N,K] int64
    anchor_weights: torch.Tensor  # [N,K]
    offsets: torch.Tensor         # [N,3]
    quats: torch.Tensor           # [N,4] wxyz, unit
    scales: torch.Tensor          # [N,3] metres
    opacities: torch.Tensor       # [N] in [0,1]
    colors: torch.Tensor          # [N,3] in [0,1]


def axis_angle_to_quat(r: torch.Tensor) -> torch.Tensor:
    """[...,3] axis-angle -> [...,4] unit wxyz quaternions (exactly (1,0,0,0) for zeros)."""
    theta = r.norm(dim=-1, keepdim=True)
    small = theta < 1e-4
    t = torch.where(small, torch.ones_like(theta), theta)
    k = torch.where(small, 0.5 - theta * theta / 48.0, torch.sin(0.5 * t) / t)    # sin(θ/2)/θ
    return torch.cat([torch.cos(0.5 * theta), k * r], -1)
