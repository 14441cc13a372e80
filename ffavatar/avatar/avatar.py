"""A reconstructed head avatar: canonical Gaussians bound to the FLAME surface, its identity and,
optionally, the estimator's per-view FLAME parameters and cameras of the input photos."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Avatar:
    """Canonical 3D Gaussians of one head (N Gaussians, V input views).

    Gaussian ``i`` is anchored to up to 4 template vertices ``anchor_idx[i]`` with barycentric-like
    ``anchor_weights[i]`` (its anchor point is their weighted sum); ``means = anchor point + offsets``
    in the canonical (neutral) FLAME frame, metres.

    Attributes:
        anchor_idx: [N,4] int64 vertex indices.
        anchor_weights: [N,4] float, rows sum to 1.
        means: [N,3] canonical centres.
        offsets: [N,3] the decoder's offsets from the anchor points.
        quats: [N,4] unit quaternions, wxyz.
        scales: [N,3] standard deviations (metres, not logs).
        opacities: [N] in (0,1).
        colors: [N,3] RGB in (0,1).
        betas_shape: [n_shape] FLAME shape coefficients (the identity).
        expr: [V,n_expr]; jaw_pose, neck_pose, rotation, translation: [V,3]; eyes_pose: [V,6]:
            the estimator's per-view FLAME parameters (head pose in the view's camera frame).
        viewmats: [V,4,4] world-to-camera (OpenCV / gsplat), Ks: [V,3,3] at ``image_size`` pixels.
    """
    anchor_idx: torch.Tensor
    anchor_weights: torch.Tensor
    means: torch.Tensor
    offsets: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    betas_shape: torch.Tensor
    expr: Optional[torch.Tensor] = None
    jaw_pose: Optional[torch.Tensor] = None
    eyes_pose: Optional[torch.Tensor] = None
    neck_pose: Optional[torch.Tensor] = None
    rotation: Optional[torch.Tensor] = None
    translation: Optional[torch.Tensor] = None
    viewmats: Optional[torch.Tensor] = None
    Ks: Optional[torch.Tensor] = None
    image_size: Optional[int] = None

    @property
    def num_gaussians(self) -> int:
        """N."""
        return self.means.shape[0]

    @property
    def num_views(self) -> int:
        """V, the input views the per-view fields describe (0 without them)."""
        return 0 if self.viewmats is None else self.viewmats.shape[0]

    def to(self, device: "torch.device | str") -> "Avatar":
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)})

    def detach(self) -> "Avatar":
        """A copy with every tensor detached from autograd."""
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)})
