"""Per-Gaussian attributes from Query-Former features, each through a bounded activation.

- offset from the anchor point: ``tanh(raw) * max_offset`` (metres);
- rotation: the canonical quaternion times a normalized residual ``normalize([1,0,0,0] + raw)``;
- scale: canonical scale x ``lo^(1-t) hi^t`` with ``t = sigmoid(raw)`` (1x at raw 0 for lo = 1/hi);
- opacity and colour: ``sigmoid(raw + logit(canonical value))``.

At raw = 0 every attribute equals the canonical Gaussian's (zero offset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ffavatar.geometry import quat_mul

_SPLIT = (3, 4, 3, 1, 3)  # offset, rotation residual, scale, opacity, colour


@dataclass
class GaussianAttributes:
    """Decoded Gaussians of B avatars: offsets [B,N,3], quats [B,N,4] (wxyz, unit), scales [B,N,3],
    opacities [B,N], colors [B,N,3] (all bounded; see the module docstring)."""
    offsets: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor


class GaussianDecoder(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear(14) -> bounded activations."""

    def __init__(self, dim: int, hidden: int = 0, *, max_offset: float = 0.02,
                 scale_range: tuple = (0.25, 4.0)):
        super().__init__()
        hidden = hidden or dim
        self.max_offset, self.scale_range = float(max_offset), tuple(float(s) for s in scale_range)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, sum(_SPLIT))
        nn.init.normal_(self.fc2.weight, std=1e-3)   # start near the canonical Gaussians
        nn.init.zeros_(self.fc2.bias)

    def forward(self, feats: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                opacities: torch.Tensor, colors: torch.Tensor) -> GaussianAttributes:
        """feats [B,N,C]; canonical quats [N,4] (wxyz), scales [N,3], opacities [N], colors [N,3]
        -> attributes (float32)."""
        raw = self.fc2(F.gelu(self.fc1(self.norm(feats)))).float()           # [B,N,14]
        d_off, d_rot, d_scale, d_opa, d_col = raw.split(_SPLIT, -1)
        offsets = torch.tanh(d_off) * self.max_offset
        ident = torch.tensor([1.0, 0.0, 0.0, 0.0], device=raw.device)
        residual = F.normalize(ident + d_rot, dim=-1)
        q = F.normalize(quat_mul(quats.float(), residual), dim=-1)
        lo, hi = self.scale_range
        t = torch.sigmoid(d_scale)
        s = scales.float() * torch.exp(math.log(lo) * (1 - t) + math.log(hi) * t)
        opa = torch.sigmoid(d_opa[..., 0] + torch.logit(opacities.float(), eps=1e-4))
        col = torch.sigmoid(d_col + torch.logit(colors.float(), eps=1e-4))
        return GaussianAttributes(offsets=offsets, quats=q, scales=s, opacities=opa, colors=col)

    def flops(self, num_gaussians: int) -> float:
        """Matmul FLOPs of a forward over ``num_gaussians`` (all avatars together)."""
        return 2.0 * num_gaussians * (self.fc1.in_features * self.fc1.out_features
                                      + self.fc2.in_features * self.fc2.out_features)


__all__ = ["GaussianDecoder", "GaussianAttributes"]
