"""Model presets: data (a dataclass), not code paths.

- ``paper``: the FFAvatar paper's sizes: ViT-L/14 encoder at 518 px (37 x 37 = 1,369 tokens per
  view), 10 Query-Former blocks of width 1024 with 16 heads, one query per Gaussian of the twice
  subdivided head (79,738), an estimator ViT-L/14 + MLP head: ~870M parameters.
- ``small``: the same structure, sized for a 2-core CPU (``reconstruct`` from 4 views in ~1.5 s)
  and for training on one GPU in minutes: ViT width 192 x 4 layers at 168 px (144 tokens per view),
  2 blocks of width 128, one query per template vertex (5,023).
- ``tiny``: for tests (sub-second everything; queries subsampled to 512).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import torch

from .encoder import ViTConfig


@dataclass
class Preset:
    """Every size of the network. ``subdiv_levels``: subdivisions of the template for the canonical
    Gaussians (0: one per vertex); ``max_queries``: keep that many of them, evenly spaced (tests)."""
    name: str
    image_size: int
    encoder: ViTConfig
    estimator: ViTConfig
    estimator_hidden: int
    qf_dim: int
    qf_depth: int
    qf_heads: int
    subdiv_levels: int
    max_queries: Optional[int] = None
    qf_mlp_ratio: float = 4.0
    n_shape: int = 300
    n_expr: int = 100
    max_offset: float = 0.02
    scale_range: tuple = (0.25, 4.0)
    freeze_encoder: bool = False

    def to_json(self) -> str:
        """The preset as JSON (stored in checkpoints)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preset":
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        d["encoder"] = ViTConfig(**d["encoder"])
        d["estimator"] = ViTConfig(**d["estimator"])
        d["scale_range"] = tuple(d["scale_range"])
        return cls(**d)


def _vit(width, depth, heads, image_size, registers=0):
    return ViTConfig(width=width, depth=depth, heads=heads, grid=image_size // 14, registers=registers)


def _paper() -> Preset:
    return Preset(name="paper", image_size=518, encoder=_vit(1024, 24, 16, 518),
                  estimator=_vit(1024, 24, 16, 518), estimator_hidden=1536, qf_dim=1024,
                  qf_depth=10, qf_heads=16, subdiv_levels=2, freeze_encoder=True)


def _small() -> Preset:
    # the kernel package's exact CPU attention path costs ~10-30 ns per score on a 2-core CPU:
    # self-attention over the 5,023 queries is ~80% of this preset's CPU time (~1.5 s for 4 views)
    return Preset(name="small", image_size=168, encoder=_vit(192, 4, 3, 168),
                  estimator=_vit(128, 4, 2, 168), estimator_hidden=256, qf_dim=128, qf_depth=2,
                  qf_heads=2, subdiv_levels=0)


def _tiny() -> Preset:
    return Preset(name="tiny", image_size=56, encoder=_vit(64, 1, 2, 56),
                  estimator=_vit(64, 1, 2, 56), estimator_hidden=64, qf_dim=64, qf_depth=1,
                  qf_heads=2, subdiv_levels=0, max_queries=512, n_shape=16, n_expr=10)


PRESETS = {"paper": _paper, "small": _small, "tiny": _tiny}


def get_preset(name: str) -> Preset:
    """A fresh :class:`Preset` by name (``paper``, ``small``, ``tiny``)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a preset name (str), got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"name: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def num_queries(preset: Preset) -> int:
    """Queries (= Gaussians) of a preset: vertices of the ``subdiv_levels`` times subdivided
    template of the synthetic head, capped at ``max_queries``."""
    from ffavatar.flame import synthetic_head
    from ffavatar.geometry import subdivision_counts
    head = synthetic_head()
    n = head.v_template.shape[0]
    if preset.subdiv_levels > 0:
        n = subdivision_counts(n, head.faces, preset.subdiv_levels)[0]
    return min(n, preset.max_queries) if preset.max_queries else n


def count_parameters(preset: "Preset | str") -> dict:
    """Parameters per part (encoder, query_former, decoder, estimator, total) of a preset, counted
    on the meta device (nothing is allocated, so ``paper`` counts instantly)."""
    from .flame_estimator import FlameEstimator
    from .gaussian_decoder import GaussianDecoder
    from .encoder import ViTEncoder
    from .query_former import QueryFormer
    p = get_preset(preset) if isinstance(preset, str) else preset
    n = num_queries(p)
    with torch.device("meta"):
        parts = {
            "encoder": ViTEncoder(p.encoder),
            "query_former": QueryFormer(n, p.qf_dim, p.qf_depth, p.qf_heads, p.encoder.width, p.qf_mlp_ratio),
            "decoder": GaussianDecoder(p.qf_dim),
            "estimator": FlameEstimator(p.estimator, p.n_shape, p.n_expr, p.estimator_hidden, p.image_size),
        }
    counts = {k: sum(t.numel() for t in m.parameters()) for k, m in parts.items()}
    counts["total"] = sum(counts.values())
    return counts


def parameter_table(preset: "Preset | str") -> str:
    """A printable table of :func:`count_parameters` (millions)."""
    c = count_parameters(preset)
    name = preset if isinstance(preset, str) else preset.name
    lines = [f"preset {name}: {num_queries(get_preset(name) if isinstance(preset, str) else preset):,} "
             f"queries"]
    lines += [f"  {k:<13} {v / 1e6:9.2f} M" for k, v in c.items()]
    return "\n".join(lines)


__all__ = ["Preset", "PRESETS", "get_preset", "num_queries", "count_parameters", "parameter_table"]
