"""The FLAME estimator: its own DINOv2-layout ViT plus an MLP head.

Per view it predicts expression, jaw / eye / neck articulation, the head pose in a normalized camera
frame (rotation, translation) and the camera focal length; the identity (shape coefficients) is
pooled over all views of one avatar. Cameras follow OpenCV / gsplat (x right, y down, z forward):
with zero pose the camera sits ``distance`` metres in front of the face (+z of the FLAME frame)
looking at it, with vertical field of view ``fov_deg``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ffavatar_kernels.reference.flame_lbs import batch_rodrigues

from .encoder import ViTConfig, ViTEncoder


@dataclass
class FlameEstimate:
    """Estimator outputs for V views of B avatars (views of avatar b are rows
    ``offsets[b]:offsets[b+1]``; ``offsets = [0, cumsum(view_counts)]``).

    shape [B,n_shape]; expr [V,n_expr]; jaw_pose, neck_pose, rotation, translation [V,3];
    eyes_pose [V,6]; focal [V] (pixels at the preset's image size); viewmats [V,4,4] world-to-camera;
    Ks [V,3,3]; view_counts: list of B ints."""
    shape: torch.Tensor
    expr: torch.Tensor
    jaw_pose: torch.Tensor
    eyes_pose: torch.Tensor
    neck_pose: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    focal: torch.Tensor
    viewmats: torch.Tensor
    Ks: torch.Tensor
    view_counts: list

    def avatar(self, b: int) -> dict:
        """The per-view fields of avatar ``b`` (and its shape) as a dict of tensors."""
        s = sum(self.view_counts[:b])
        e = s + self.view_counts[b]
        out = {k: getattr(self, k)[s:e] for k in ("expr", "jaw_pose", "eyes_pose", "neck_pose",
                                                    "rotation", "translation", "focal", "viewmats", "Ks")}
        out["shape"] = self.shape[b]
        return out


class FlameEstimator(nn.Module):
    """``forward(images [V,3,S,S], view_counts)`` -> :class:`FlameEstimate`."""

    def __init__(self, vit: ViTConfig, n_shape: int, n_expr: int, hidden: int = 0,
                 image_size: int = 224, distance: float = 0.75, fov_deg: float = 20.0):
        super().__init__()
        self.n_shape, self.n_expr, self.image_size = n_shape, n_expr, image_size
        self.distance = float(distance)
        self.focal0 = 0.5 / math.tan(math.radians(fov_deg) / 2)         # focal / image height
        c = vit.width
        hidden = hidden or 2 * c
        self.vit = ViTEncoder(vit)
        self.head = nn.Sequential(nn.Linear(2 * c, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.split = (n_expr, 3, 6, 3, 3, 3, 1)   # expr, jaw, eyes, neck, rotation, translation, focal
        self.per_view = nn.Linear(hidden, sum(self.split))
        self.shape_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_shape))
        for lin in (self.per_view, self.shape_head[-1]):
            nn.init.normal_(lin.weight, std=1e-3)
            nn.init.zeros_(lin.bias)

    def forward(self, images: torch.Tensor, view_counts: list) -> FlameEstimate:
        """images [V,3,S,S] normalized; view_counts: views per avatar (sum V)."""
        tokens = self.vit(images)                                             # [V,1+R+N,C]
        pooled = torch.cat([tokens[:, 0], tokens[:, self.vit.num_prefix_tokens:].mean(1)], -1)
        h = self.head(pooled)                                                 # [V,hidden]
        raw = self.per_view(h).float()
        expr, jaw, eyes, neck, rot, trans, foc = raw.split(self.split, -1)
        # shape: mean of per-view features over each avatar's views, then the shape head
        owner = torch.repeat_interleave(torch.arange(len(view_counts), device=h.device),
                                        torch.tensor(view_counts, device=h.device))
        summed = h.new_zeros(len(view_counts), h.shape[1]).index_add_(0, owner, h)
        mean = summed / torch.tensor(view_counts, device=h.device, dtype=h.dtype)[:, None]
        shape = self.shape_head(mean).float()                                 # [B,n_shape]
        translation = 0.1 * trans
        focal = self.focal0 * self.image_size * torch.exp(math.log(2.0) * torch.tanh(foc[:, 0]))
        viewmats, Ks = self.cameras(rot, translation, focal)
        return FlameEstimate(shape=shape, expr=expr, jaw_pose=jaw, eyes_pose=eyes, neck_pose=neck,
                             rotation=rot, translation=translation, focal=focal, viewmats=viewmats,
                             Ks=Ks, view_counts=list(view_counts))

    def cameras(self, rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor):
        """rotation [V,3] axis-angle (head in camera frame), translation [V,3], focal [V] pixels ->
        (viewmats [V,4,4] world-to-camera, Ks [V,3,3])."""
        v = rotation.shape[0]
        flip = torch.diag(rotation.new_tensor([1.0, -1.0, -1.0]))             # face the camera
        viewmats = torch.zeros(v, 4, 4, dtype=rotation.dtype, device=rotation.device)
        viewmats[:, :3, :3] = flip @ batch_rodrigues(rotation)
        viewmats[:, :3, 3] = translation + rotation.new_tensor([0.0, 0.0, self.distance])
        viewmats[:, 3, 3] = 1.0
        c = self.image_size / 2.0
        Ks = torch.zeros(v, 3, 3, dtype=focal.dtype, device=focal.device)
        Ks[:, 0, 0], Ks[:, 1, 1] = focal, focal
        Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = c, c, 1.0
        return viewmats, Ks

    def flops(self, num_images: int) -> float:
        """Matmul FLOPs of a forward over ``num_images`` images."""
        s = self.image_size
        head = sum(2.0 * m.in_features * m.out_features for m in self.modules()
                   if isinstance(m, nn.Linear) and not any(m is x for x in self.vit.modules()))
        return self.vit.flops(num_images, s, s) + num_images * head


__all__ = ["FlameEstimator", "FlameEstimate"]
