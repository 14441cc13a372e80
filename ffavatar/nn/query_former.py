"""The Query-Former: one learnable query per canonical Gaussian reads the multi-view token bank.

Each of L pre-norm blocks runs self-attention over the queries, cross-attention from the queries
into the packed bank of every view's tokens (avatar ``b`` owns bank rows
``cu_seqlens[b]:cu_seqlens[b+1]``: its V_b views x tokens, no padding), then an MLP. A query is a
learnable embedding plus a positional embedding of its canonical 3D point (Fourier features ->
linear).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ffavatar_kernels.profiling import nvtx_range
from .attention import attention
from .encoder import Mlp


class FourierEmbed(nn.Module):
    """points [...,3] -> [..., dim]: ``Linear([x, sin(2^k pi x / extent), cos(...)], k < freqs)``."""

    def __init__(self, dim: int, freqs: int = 8, extent: float = 0.25):
        super().__init__()
        self.freqs, self.extent = freqs, extent
        self.register_buffer("bands", (2.0 ** torch.arange(freqs)) * math.pi / extent, persistent=False)
        self.proj = nn.Linear(3 + 6 * freqs, dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:  # [...,3]
        x = points[..., None] * self.bands                     # [...,3,F]
        feats = torch.cat([points, x.sin().flatten(-2), x.cos().flatten(-2)], -1)
        return self.proj(feats)


class QFBlock(nn.Module):
    """Pre-norm block: self-attention over queries, cross-attention into the bank, MLP."""

    def __init__(self, dim: int, heads: int, kv_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj1 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.proj2 = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def self_attn(self, x: torch.Tensor) -> torch.Tensor:  # x [B,N,C] -> [B,N,C]
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])                               # [B,H,N,d]
        return self.proj1(out.transpose(1, 2).reshape(b, n, c))

    def cross_attn(self, x: torch.Tensor, bank: torch.Tensor, cu_seqlens: torch.Tensor,
                   max_seqlen: Optional[int]) -> torch.Tensor:
        """x [B,N,C] queries; bank [total_k,C_kv] packed tokens; cu_seqlens [B+1] -> [B,N,C]."""
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        q = self.q(self.norm2(x)).view(b, n, h, d).transpose(1, 2)            # [B,H,N,d]
        kv = self.kv(self.norm_kv(bank)).view(-1, 2, h, d)                    # [total_k,2,H,d]
        out = attention(q, kv[:, 0], kv[:, 1], cu_seqlens_k=cu_seqlens, max_seqlen_k=max_seqlen)
        return self.proj2(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x, bank, cu_seqlens, max_seqlen=None):
        with nvtx_range("ffavatar.nn.query_former.self_attn"):
            x = x + self.self_attn(x)
        with nvtx_range("ffavatar.nn.query_former.cross_attn"):
            x = x + self.cross_attn(x, bank, cu_seqlens, max_seqlen)
        with nvtx_range("ffavatar.nn.query_former.mlp"):
            return x + self.mlp(self.norm3(x))


class QueryFormer(nn.Module):
    """``forward(points [N,3], bank [total_k,C_kv], cu_seqlens [B+1])`` -> features [B,N,C].

    ``num_queries`` learnable embeddings (one per canonical Gaussian) plus the Fourier embedding of
    the Gaussians' canonical points; B avatars share the queries and differ by their bank rows."""

    def __init__(self, num_queries: int, dim: int, depth: int, heads: int, kv_dim: int,
                 mlp_ratio: float = 4.0, fourier_freqs: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"QueryFormer: dim {dim} is not divisible by heads {heads}")
        self.num_queries, self.dim, self.heads, self.kv_dim = num_queries, dim, heads, kv_dim
        self.mlp_ratio = mlp_ratio
        self.query_embed = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.pos_embed = FourierEmbed(dim, fourier_freqs)
        self.blocks = nn.ModuleList(QFBlock(dim, heads, kv_dim, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def queries(self, points: torch.Tensor) -> torch.Tensor:
        """points [N,3] canonical positions -> initial queries [N,C]."""
        if points.shape != (self.num_queries, 3):
            raise ValueError(f"points: expected shape [{self.num_queries},3], got {list(points.shape)}")
        return self.query_embed + self.pos_embed(points.to(self.query_embed.dtype))

    def forward(self, points: torch.Tensor, bank: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: Optional[int] = None) -> torch.Tensor:
        """points [N,3]; bank [total_k,C_kv]; cu_seqlens [B+1] int32 -> [B,N,C]."""
        if bank.dim() != 2 or bank.shape[1] != self.kv_dim:
            raise ValueError(f"bank: expected shape [total_k,{self.kv_dim}], got {list(bank.shape)}")
        batch = cu_seqlens.numel() - 1
        x = self.queries(points).unsqueeze(0).expand(batch, -1, -1)          # [B,N,C]
        for blk in self.blocks:
            x = blk(x, bank, cu_seqlens, max_seqlen)
        return self.norm(x)

    def flops(self, view_counts: list, tokens_per_view: int) -> dict:
        """Matmul FLOPs per part for avatars with ``view_counts`` views: self_attn, cross_attn, mlp."""
        n, c, L = self.num_queries, self.dim, len(self.blocks)
        hid = int(c * self.mlp_ratio)
        b = len(view_counts)
        nk = sum(view_counts) * tokens_per_view
        self_attn = L * b * (2.0 * n * c * 4 * c + 4.0 * n * n * c)
        cross = L * (b * 2.0 * n * c * 2 * c + 2.0 * nk * self.kv_dim * 2 * c + 4.0 * n * nk * c)
        mlp = L * b * 2.0 * n * c * 2 * hid
        return {"self_attn": self_attn, "cross_attn": cross, "mlp": mlp}


__all__ = ["QueryFormer", "QFBlock", "FourierEmbed"]
