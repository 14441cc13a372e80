"""Encoder weights from a local file in DINOv2-release, timm or HF-transformers naming.

Nothing downloads: pass a file you have (``.safetensors``, or a torch ``.pth`` / ``.pt`` / ``.bin``
state dict). The naming is detected from the keys:

=========  ==================================================  ==================================
naming     tell-tale keys                                      source
=========  ==================================================  ==================================
``hf``     ``embeddings.cls_token``, ``encoder.layer.N.*``     ``Dinov2Model``,
                                                               ``Dinov2WithRegistersModel``
``timm``   ``cls_token``, ``blocks.N.*`` (``reg_token``)       ``vit_*_patch14_dinov2`` / ``_reg4``
``dinov2`` ``mask_token`` or ``register_tokens``               DINOv2's release (torch.hub files)
=========  ==================================================  ==================================

A timm file without registers and a release file without ``mask_token`` have identical keys and
tensors; they differ only in how position embeddings are resampled (pass ``naming=`` to choose).
The encoder's resampling convention is set to the source's, so features match the source model.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Union

import torch

from .encoder import ViTConfig, ViTEncoder

NAMINGS = ("dinov2", "timm", "hf")
# position-embedding resampling of each source: (antialias, offset)
_INTERP = {"dinov2": (False, 0.1), "timm": (True, None), "hf": (False, None), "hf_reg": (True, None)}


class EncoderWeightsError(ValueError):
    """An encoder weight file that does not fit the encoder (lists missing / unexpected keys)."""


def read_state_dict(path: Union[str, os.PathLike]) -> dict:
    """Tensors of a ``.safetensors`` file or a torch state-dict file (``weights_only`` unpickling;
    a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper and a ``module.`` prefix are removed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("model", "state_dict", "teacher"):
            if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
                sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EncoderWeightsError(f"{path}: expected a state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def detect_naming(sd: dict) -> str:
    """``"hf"``, ``"timm"`` or ``"dinov2"`` from the keys of ``sd`` (see the module docstring)."""
    keys = set(sd)
    if any(k.startswith("embeddings.") for k in keys):
        return "hf"
    if "reg_token" in keys:
        return "timm"
    if "mask_token" in keys or "register_tokens" in keys:
        return "dinov2"
    if "cls_token" in keys and "pos_embed" in keys:
        return "timm"
    raise EncoderWeightsError("cannot tell the naming of this state dict (expected DINOv2-release, "
                              f"timm or HF transformers keys); first keys: {sorted(keys)[:8]}")


def _from_timm(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k == "reg_token":
            out["register_tokens"] = v
        else:
            out[k] = v
    if "reg_token" in sd and "pos_embed" in out:
        # timm's _reg4 models are "no_embed_class": the class token already holds its position
        pos = out["pos_embed"]
        out["pos_embed"] = torch.cat([pos.new_zeros(pos.shape[0], 1, pos.shape[2]), pos], 1)
    return out


def _from_dinov2(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k == "mask_token":  # training-time only (masked image modelling)
            continue
        k = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)  # chunked blocks (ViT-g release)
        out[k] = v
    return out


_HF_FIXED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = {  # per-layer suffixes (transformers 5 and 4 names) -> ours
    "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.o_proj": "attn.proj", "attention.output.dense": "attn.proj",
}
_HF_QKV = {"attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
           "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2}


def _from_hf(sd: dict) -> dict:
    out, qkv, leftover = {}, {}, {}
    for k, v in sd.items():
        if k == "embeddings.mask_token":
            continue
        if k in _HF_FIXED:
            out[_HF_FIXED[k]] = v
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", k)
        if m:
            i, mid, leaf = m.groups()
            if leaf == "lambda1":
                mid, leaf = mid + ".lambda1", None
            if mid in _HF_LAYER:
                out[f"blocks.{i}.{_HF_LAYER[mid]}" + (f".{leaf}" if leaf else "")] = v
                continue
            if mid in _HF_QKV:
                qkv.setdefault((i, leaf), [None, None, None])[_HF_QKV[mid]] = v
                continue
        leftover[k] = v  # reported as unexpected
    for (i, leaf), parts in qkv.items():
        if any(p is None for p in parts):
            names = [n for n, j in _HF_QKV.items() if parts[j] is None and "proj" in n]
            raise EncoderWeightsError(f"missing keys: layer {i} lacks {names} ({leaf})")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat(parts, 0)
    out.update(leftover)
    return out


def convert_state_dict(sd: dict, naming: Optional[str] = None) -> tuple[dict, str]:
    """A state dict in any supported naming -> (our DINOv2-release naming, detected naming)."""
    naming = naming or detect_naming(sd)
    if naming not in NAMINGS:
        raise ValueError(f"naming: expected one of {NAMINGS}, got {naming!r}")
    conv = {"timm": _from_timm, "dinov2": _from_dinov2, "hf": _from_hf}[naming]
    return conv(sd), naming


def load_encoder_weights(encoder: ViTEncoder, source: Union[str, os.PathLike, dict], *,
                         naming: Optional[str] = None) -> str:
    """Load ``source`` (a file path or a state dict) into ``encoder``; returns the naming used.

    Raises :class:`EncoderWeightsError` listing every missing / unexpected key and shape mismatch.
    Also sets the encoder's position-embedding resampling to the source's convention.
    """
    where = "state dict" if isinstance(source, dict) else os.fspath(source)
    sd = source if isinstance(source, dict) else read_state_dict(source)
    ours, naming = convert_state_dict(sd, naming)
    target = encoder.state_dict()
    missing = sorted(set(target) - set(ours))
    unexpected = sorted(set(ours) - set(target))
    shapes = sorted(f"{k}: file {list(ours[k].shape)} vs encoder {list(target[k].shape)}"
                    for k in set(ours) & set(target) if ours[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        lines = [f"{where}: encoder weights ({naming} naming) do not fit the encoder "
                 f"(width {encoder.config.width}, depth {encoder.config.depth}, "
                 f"{encoder.config.registers} registers)"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if shapes:
            lines.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
        raise EncoderWeightsError("\n".join(lines))
    encoder.load_state_dict({k: v.to(target[k].dtype) for k, v in ours.items()}, strict=True)
    interp = "hf_reg" if naming == "hf" and encoder.config.registers else naming
    encoder.config.pos_antialias, encoder.config.pos_offset = _INTERP[interp]
    return naming


def infer_vit_config(source: Union[str, os.PathLike, dict], *, heads: Optional[int] = None,
                     naming: Optional[str] = None) -> ViTConfig:
    """The :class:`ViTConfig` a state dict was made for (``heads`` defaults to width / 64, the
    DINOv2 convention; it cannot be read from the tensors)."""
    sd = source if isinstance(source, dict) else read_state_dict(source)
    ours, _ = convert_state_dict(sd, naming)
    w = ours["patch_embed.proj.weight"]                        # [C,3,p,p]
    width, patch = w.shape[0], w.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in ours if (m := re.match(r"^blocks\.(\d+)\.", k)))
    grid = int(round((ours["pos_embed"].shape[1] - 1) ** 0.5))
    regs = ours["register_tokens"].shape[1] if "register_tokens" in ours else 0
    hidden = ours["blocks.0.mlp.fc1.weight"].shape[0]
    return ViTConfig(width=width, depth=depth, heads=heads or max(1, width // 64), patch=patch,
                     grid=grid, registers=regs, mlp_ratio=hidden / width)


__all__ = ["EncoderWeightsError", "read_state_dict", "detect_naming", "convert_state_dict",
           "load_encoder_weights", "infer_vit_config", "NAMINGS"]
