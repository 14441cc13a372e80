"""A Vision Transformer in DINOv2's layout (patch 14, class token, optional register tokens,
LayerScale, pre-norm blocks, GELU MLP, learned position embeddings interpolated to the input size).

Parameter names follow DINOv2's own release (``cls_token``, ``pos_embed``, ``register_tokens``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``,
``norm``), so release checkpoints load directly; ``ffavatar.nn.weights`` converts timm and HF
transformers checkpoints. Every attention runs through :func:`ffavatar.nn.attention.attention`.

Position embeddings cover the class token and a ``grid x grid`` patch grid (the pretraining size).
At another input size the patch part is resampled bicubically; the exact resampling differs between
implementations, so it is part of the config (``pos_antialias``, ``pos_offset``) and the weight
loader sets it to the source's convention: timm and HF ``Dinov2WithRegisters`` resample to the size
with antialiasing, HF ``Dinov2Model`` without, DINOv2's release by a scale factor ``(n + 0.1) / grid``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention


@dataclass
class ViTConfig:
    """Shape of a DINOv2-layout ViT (defaults: ViT-S/14).

    ``grid`` is the pretraining patch grid (518 px / 14 = 37 for DINOv2); ``registers`` the number of
    register tokens (0 or 4); ``pos_antialias`` / ``pos_offset`` the position-embedding resampling
    convention (see the module docstring)."""
    width: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 14
    grid: int = 37
    registers: int = 0
    mlp_ratio: float = 4.0
    layerscale_init: float = 1e-5
    eps: float = 1e-6
    pos_antialias: bool = True
    pos_offset: Optional[float] = None

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"ViTConfig: width {self.width} is not divisible by heads {self.heads}")


class LayerScale(nn.Module):
    """``x * gamma`` with a learned per-channel ``gamma`` [C]."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., C]
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU (erf) -> Linear."""

    def __init__(self, dim: int, hidden: int, out: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., C]
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (DINOv2 / timm layout)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,N,C] -> [B,N,C]
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])                   # [B,H,N,d]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = SelfAttention(cfg.width, cfg.heads)
        self.ls1 = LayerScale(cfg.width, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))
        self.ls2 = LayerScale(cfg.width, cfg.layerscale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B,N,C]
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution: [B,3,H,W] -> [B,(H/p)*(W/p),C]."""

    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    """DINOv2-layout ViT. ``forward(images [B,3,H,W])`` -> normalized tokens ``[B,1+R+N,C]``
    (class token, R register tokens, N = (H/14)*(W/14) patch tokens, row-major)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        c = cfg.width
        self.patch_embed = PatchEmbed(cfg.patch, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid * cfg.grid, c))
        if cfg.registers > 0:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.registers, c))
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(c, eps=cfg.eps)
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def num_prefix_tokens(self) -> int:
        """Class token + register tokens."""
        return 1 + self.config.registers

    def interpolate_pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """Position embeddings for a ``gh x gw`` patch grid: ``[1,1+gh*gw,C]`` (float32 resampling)."""
        cfg = self.config
        pos = self.pos_embed
        if gh == cfg.grid and gw == cfg.grid:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        grid = patch_pos.reshape(1, cfg.grid, cfg.grid, -1).permute(0, 3, 1, 2).float()
        # bicubic resampling has no deterministic CUDA backward: under
        # torch.use_deterministic_algorithms(True), resample this small grid on the CPU instead
        cpu_detour = (grid.is_cuda and torch.is_grad_enabled() and pos.requires_grad
                      and torch.are_deterministic_algorithms_enabled())
        if cpu_detour:
            grid = grid.cpu()
        if cfg.pos_offset is None:
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False,
                                 antialias=cfg.pos_antialias)
        else:  # DINOv2 release: a scale factor nudged by an offset (avoids float rounding in size)
            sh = (gh + cfg.pos_offset) / cfg.grid
            sw = (gw + cfg.pos_offset) / cfg.grid
            grid = F.interpolate(grid, scale_factor=(sh, sw), mode="bicubic", align_corners=False,
                                 antialias=cfg.pos_antialias)
            if grid.shape[-2:] != (gh, gw):
                raise RuntimeError(f"position embedding resampled to {tuple(grid.shape[-2:])}, "
                                   f"expected {(gh, gw)}")
        patch_pos = grid.to(device=pos.device, dtype=pos.dtype).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([cls_pos, patch_pos], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] (normalized; H, W multiples of the patch) -> tokens [B,1+R+N,C]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape [B,3,H,W], got {list(images.shape)}")
        p = self.config.patch
        h, w = images.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"images: height and width must be multiples of the patch size {p}, "
                             f"got {h}x{w}")
        x = self.patch_embed(images)                                   # [B,N,C]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        x = x + self.interpolate_pos_embed(h // p, w // p).to(x.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x[:, :1], regs, x[:, 1:]], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def flops(self, num_images: int, h: int, w: int) -> float:
        """Matmul FLOPs (2 per multiply-add) of a forward over ``num_images`` images of ``h x w``."""
        cfg = self.config
        n = (h // cfg.patch) * (w // cfg.patch)
        t = n + self.num_prefix_tokens
        c = cfg.width
        hidden = int(c * cfg.mlp_ratio)
        patch = 2.0 * n * c * 3 * cfg.patch ** 2
        per_block = 2.0 * t * c * (3 * c + c + 2 * hidden) + 4.0 * t * t * c
        return num_images * (patch + cfg.depth * per_block)


def num_patches(cfg: ViTConfig, image_size: int) -> int:
    """Patch tokens per square image of ``image_size`` pixels."""
    return (image_size // cfg.patch) ** 2


__all__ = ["ViTConfig", "ViTEncoder", "num_patches", "Mlp", "LayerScale"]
