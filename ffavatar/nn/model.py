"""FFAvatarModel: a few photos of a head in, an animatable 3D Gaussian :class:`Avatar` out.

Stages (each an NVTX range ``ffavatar.nn.<stage>``): ``preprocess`` (resize / centre crop to the
preset's size, ImageNet normalization), ``encoder`` (DINOv2-layout ViT per view; all views' patch
tokens form one packed bank), ``estimator`` (per-view FLAME parameters and cameras, shape per
avatar), ``query_former`` (one query per canonical Gaussian reads its avatar's bank rows) and
``decoder`` (bounded per-Gaussian attributes). A batch holds avatars with different view counts
without padding (``cu_seqlens``). On CUDA the network runs under bf16 autocast.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ffavatar_kernels.profiling import nvtx_range
from ffavatar.avatar import Avatar
from ffavatar.flame import (FlameModel, canonical_gaussians, flame_fingerprint, synthetic_fingerprint,
                            synthetic_head)

from .encoder import ViTEncoder
from .flame_estimator import FlameEstimate, FlameEstimator
from .gaussian_decoder import GaussianAttributes, GaussianDecoder
from .presets import Preset, get_preset
from .query_former import QueryFormer
from .weights import load_encoder_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "ffavatar.nn.FFAvatarModel"
CHECKPOINT_VERSION = 1
_warned_random = False
Images = Union[torch.Tensor, Sequence[torch.Tensor]]


def _check_view_set(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [V,3,H,W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected shape [V,3,H,W], got {list(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"{name}: expected 3 (RGB) channels in dim 1, got shape {list(x.shape)}")
    if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name}: expected at least one non-empty view, got shape {list(x.shape)}")
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected uint8 or float in [0,1], got {x.dtype}")


def split_images(images: Images) -> tuple[list, bool]:
    """Validate ``images`` ([V,3,H,W] or a non-empty list of such) -> (view sets, was a list)."""
    if isinstance(images, torch.Tensor):
        _check_view_set(images, "images")
        return [images], False
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images: expected a tensor [V,3,H,W] or a list of them, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images: expected at least one view set, got an empty list")
    for i, x in enumerate(images):
        _check_view_set(x, f"images[{i}]")
    return list(images), True


def preprocess(views: torch.Tensor, size: int) -> torch.Tensor:
    """views [V,3,H,W] uint8 or float in [0,1] -> [V,3,size,size] float32, ImageNet-normalized:
    the shorter side resized to ``size`` (bilinear, antialiased), then a centre crop."""
    x = views.float() / 255.0 if views.dtype == torch.uint8 else views.float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    mean = x.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = x.new_tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


class FFAvatarModel(nn.Module):
    """The FFAvatar network for a :class:`~ffavatar.nn.presets.Preset`.

    Build with :meth:`from_preset` (random weights) or :meth:`from_pretrained` (our safetensors
    checkpoint); add DINOv2 encoder weights with :meth:`load_encoder_weights`."""

    def __init__(self, preset: Preset, flame: Optional[FlameModel] = None):
        """``flame``: the FLAME model the avatars are bound to (its template gives the canonical
        Gaussians the queries stand for; default: the built-in synthetic head). A model trained on
        captures tracked with a real FLAME needs that FLAME."""
        super().__init__()
        self.preset = preset
        head = synthetic_head() if flame is None else flame.to("cpu", torch.float32)
        self.flame_fingerprint = synthetic_fingerprint() if flame is None else flame_fingerprint(head)
        g = canonical_gaussians(head, preset.subdiv_levels)
        keep = torch.arange(g.means.shape[0])
        if preset.max_queries and preset.max_queries < len(keep):
            keep = torch.linspace(0, len(keep) - 1, preset.max_queries).round().long()
        for name in ("anchor_idx", "anchor_weights", "means", "quats", "scales", "opacities", "colors"):
            self.register_buffer(f"canon_{name}", getattr(g, name)[keep].contiguous(), persistent=False)
        n = len(keep)
        self.encoder = ViTEncoder(preset.encoder)
        self.query_former = QueryFormer(n, preset.qf_dim, preset.qf_depth, preset.qf_heads,
                                        preset.encoder.width, preset.qf_mlp_ratio)
        self.decoder = GaussianDecoder(preset.qf_dim, max_offset=preset.max_offset,
                                       scale_range=preset.scale_range)
        self.estimator = FlameEstimator(preset.estimator, preset.n_shape, preset.n_expr,
                                        preset.estimator_hidden, preset.image_size)
        if preset.freeze_encoder:
            self.encoder.requires_grad_(False)
        self.pretrained = False   # set by from_pretrained
        self.metadata: dict = {}  # the checkpoint's metadata (from_pretrained)
        self.autocast = True      # bf16 autocast on CUDA

    # -------------------------------------------------------------------------------- building
    @classmethod
    def from_preset(cls, name: "str | Preset", flame: Optional[FlameModel] = None) -> "FFAvatarModel":
        """A randomly initialised model of preset ``name`` (``paper``, ``small``, ``tiny``), bound
        to ``flame`` (default: the built-in synthetic head)."""
        return cls(name if isinstance(name, Preset) else get_preset(name), flame)

    def save_pretrained(self, path: "str | os.PathLike", *, dtype: Optional[torch.dtype] = None,
                        metadata: Optional[dict] = None) -> None:
        """Write every parameter to a safetensors file (atomically), the preset in its metadata.

        dtype: store floating-point tensors in this dtype (e.g. ``torch.float16`` halves the file;
        :meth:`from_pretrained` loads them back into the model's float32 parameters);
        metadata: extra ``str -> str`` entries (what it was trained on, evaluation figures)."""
        from safetensors.torch import save
        from ffavatar.flame.atomic import atomic_write
        path = os.fspath(path)
        tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                   for k, v in self.state_dict().items()}
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update({"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
                     "preset": self.preset.to_json(), "flame_fingerprint": self.flame_fingerprint})
        atomic_write(path, save(tensors, metadata=meta))

    @classmethod
    def from_pretrained(cls, path: "Optional[str | os.PathLike]" = None,
                        device: "str | torch.device" = "cpu", flame: Optional[FlameModel] = None) -> "FFAvatarModel":
        """Load a checkpoint written by :meth:`save_pretrained`; without ``path``, the trained
        default shipped in the package (:mod:`ffavatar.nn.pretrained`). The file's metadata is
        kept in ``model.metadata``. ``flame``: the FLAME model a checkpoint trained on real
        captures was bound to (checked against the fingerprint it records; default: the built-in
        synthetic head)."""
        from ffavatar.flame.versioned import read_versioned
        from .pretrained import default_weights_path
        if path is None:
            path = default_weights_path()
            if not os.path.isfile(path):
                raise FileNotFoundError(f"path: the shipped default weights {path!r} are missing from this "
                                        f"installation; reinstall ffavatar or pass a checkpoint path")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"path: no such file {path!r}")
        tensors, meta = read_versioned(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ValueError,
                                       "an FFAvatarModel checkpoint")
        try:
            preset = Preset.from_json(meta["preset"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: bad preset metadata ({exc})") from exc
        want = meta.get("flame_fingerprint", synthetic_fingerprint())
        have = synthetic_fingerprint() if flame is None else flame_fingerprint(flame)
        if want != have:
            what = ("the built-in synthetic head" if want == synthetic_fingerprint() else f"a FLAME model with "
                    f"fingerprint {want[:19]}...")
            raise ValueError(f"{path}: this checkpoint is bound to {what}, not to the "
                             f"{'synthetic head' if flame is None else 'flame'} given; pass flame=<that model> "
                             f"(ffavatar.flame.load_flame)")
        model = cls(preset, flame)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not fit preset {preset.name!r}: missing keys "
                             f"{missing}, unexpected keys {unexpected}")
        model.pretrained = True
        model.metadata = dict(meta)
        return model.to(device).eval()

    def load_encoder_weights(self, path: "str | os.PathLike | dict", *, naming: Optional[str] = None) -> str:
        """DINOv2 encoder weights from a local file (DINOv2-release, timm or HF naming); returns
        the naming detected. See :func:`ffavatar.nn.weights.load_encoder_weights`."""
        return load_encoder_weights(self.encoder, path, naming=naming)

    @property
    def device(self) -> torch.device:
        return self.canon_means.device

    @property
    def num_gaussians(self) -> int:
        return self.canon_means.shape[0]

    # -------------------------------------------------------------------------------- running
    def _warn_random(self):
        global _warned_random
        if not self.pretrained and not _warned_random:
            _warned_random = True
            warnings.warn("FFAvatarModel: no checkpoint loaded, running with randomly initialised "
                          "weights (outputs are meaningless); use FFAvatarModel.from_pretrained(path)",
                          stacklevel=4)

    def _autocast(self):
        on = self.autocast and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on)

    def _prepare(self, images: Images) -> tuple[torch.Tensor, list, bool]:
        sets, listed = split_images(images)
        with nvtx_range("ffavatar.nn.preprocess"):
            x = torch.cat([preprocess(s.to(self.device), self.preset.image_size) for s in sets], 0)
        return x, [s.shape[0] for s in sets], listed

    def forward(self, images: Images) -> tuple[GaussianAttributes, FlameEstimate]:
        """images [V,3,H,W] or a list of B such view sets (uint8 or float in [0,1]) ->
        (Gaussian attributes [B,N,...], FLAME estimate). Differentiable (training)."""
        x, counts, _ = self._prepare(images)
        return self._run(x, counts)

    def _run(self, x: torch.Tensor, counts: list) -> tuple[GaussianAttributes, FlameEstimate]:
        """x [V,3,S,S] normalized; counts: views per avatar."""
        with self._autocast():
            with nvtx_range("ffavatar.nn.encoder"):
                tokens = self.encoder(x)[:, self.encoder.num_prefix_tokens:]   # [V,T,C]
                per_view = tokens.shape[1]
                bank = tokens.reshape(-1, tokens.shape[-1])                   # [V*T,C]
            cu = torch.tensor([0] + counts, dtype=torch.int32).cumsum(0, dtype=torch.int32) * per_view
            cu = cu.to(x.device)
            with nvtx_range("ffavatar.nn.estimator"):
                est = self.estimator(x, counts)
            with nvtx_range("ffavatar.nn.query_former"):
                feats = self.query_former(self.canon_means, bank, cu, max(counts) * per_view)
            with nvtx_range("ffavatar.nn.decoder"):
                attrs = self.decoder(feats, self.canon_quats, self.canon_scales, self.canon_opacities,
                                     self.canon_colors)
        return attrs, est

    @torch.no_grad()
    def estimate_flame(self, images: Images) -> FlameEstimate:
        """Only the FLAME estimator: per-view expression, jaw / eyes / neck, head pose, camera,
        and shape per avatar, for images [V,3,H,W] or a list of view sets."""
        self._warn_random()
        x, counts, _ = self._prepare(images)
        with self._autocast(), nvtx_range("ffavatar.nn.estimator"):
            return self.estimator(x, counts)

    @torch.no_grad()
    def reconstruct(self, images: Images) -> "Avatar | list[Avatar]":
        """Photos -> avatar(s). ``images``: [V,3,H,W] (one avatar from V views) or a list of view
        sets with different V (one varlen batch, no padding) -> an :class:`Avatar` or a list."""
        self._warn_random()
        x, counts, listed = self._prepare(images)
        attrs, est = self._run(x, counts)
        avatars = [self.to_avatar(attrs, est, b) for b in range(len(counts))]
        return avatars if listed else avatars[0]

    def to_avatar(self, attrs: GaussianAttributes, est: FlameEstimate, b: int) -> Avatar:
        """Avatar ``b`` of a forward's decoded attributes and estimate (what ``model(images)``
        returns). Differentiable: no detach, so training renders it and backpropagates."""
        anchors = self.canon_means.float()                                     # [N,3]
        views = est.avatar(b)
        return Avatar(anchor_idx=self.canon_anchor_idx, anchor_weights=self.canon_anchor_weights,
                      means=anchors + attrs.offsets[b], offsets=attrs.offsets[b], quats=attrs.quats[b],
                      scales=attrs.scales[b], opacities=attrs.opacities[b], colors=attrs.colors[b],
                      betas_shape=views["shape"], flame_fingerprint=self.flame_fingerprint,
                      expr=views["expr"], jaw_pose=views["jaw_pose"],
                      eyes_pose=views["eyes_pose"], neck_pose=views["neck_pose"],
                      rotation=views["rotation"], translation=views["translation"],
                      viewmats=views["viewmats"], Ks=views["Ks"], image_size=self.preset.image_size)

    def flops(self, view_counts: Sequence[int]) -> dict:
        """Analytic matmul FLOPs of a forward per stage (encoder, estimator, query_former parts,
        decoder) for avatars with ``view_counts`` views, and the total."""
        s = self.preset.image_size
        v = sum(view_counts)
        per_view = (s // self.preset.encoder.patch) ** 2
        out = {"encoder": self.encoder.flops(v, s, s), "estimator": self.estimator.flops(v)}
        for k, f in self.query_former.flops(list(view_counts), per_view).items():
            out[f"query_former.{k}"] = f
        out["decoder"] = self.decoder.flops(len(view_counts) * self.num_gaussians)
        out["total"] = sum(out.values())
        return out


__all__ = ["FFAvatarModel", "preprocess", "split_images", "IMAGENET_MEAN", "IMAGENET_STD"]
