"""``.ffavatar`` files: one safetensors file holding an :class:`~ffavatar.avatar.Avatar`.

Layout (format ``ffavatar``, ``format_version`` 1). Tensors, N Gaussians, K anchors, V views:

=========================  ===========  ==================================================
name                       shape        meaning
=========================  ===========  ==================================================
``anchor_idx``             [N,K] int64  template vertices each Gaussian is anchored to
``anchor_weights``         [N,K]        anchor weights (rows sum to 1)
``means``                  [N,3]        canonical centres as produced (informational)
``offsets``                [N,3]        offsets from the anchor points, metres
``quats``                  [N,4]        canonical rotations, wxyz
``scales``                 [N,3]        standard deviations, metres (not logs)
``opacities``              [N]          in [0,1] (not logits)
``colors``                 [N,3]        RGB in [0,1]
``betas_shape``            [n_shape]    FLAME shape coefficients
``residual.<name>``        as Residuals optional, all five or none: offsets, rotations, scales,
                                        opacities, colors
``views.<name>``           [V,...]      optional per-view estimates: expr, jaw_pose, eyes_pose,
                                        neck_pose, rotation, translation, viewmats, Ks
=========================  ===========  ==================================================

``__metadata__`` (JSON strings): ``format`` = "ffavatar", ``format_version`` = "1",
``flame_fingerprint`` ("sha256:..." or "" when unknown), ``n_shape``, ``n_expr`` ("" when
unknown), ``num_gaussians``, ``units`` = "meters", ``camera_convention`` = "opencv",
``quaternion_order`` = "wxyz", ``image_size`` ("" without views), ``library`` /
``library_version``, and ``content_sha256``: a sha256 over the other metadata (sorted JSON) and
every tensor (name, dtype, shape, bytes, in name order), so a flipped bit anywhere is reported as
corruption instead of loading as a different avatar.

Files are written atomically (:func:`ffavatar.flame.atomic.atomic_write`). Reading checks the
safetensors structure itself first (clear messages for truncated files and broken headers), then
the metadata, the checksum, the tensors' presence and shapes, and, given a model, its fingerprint.
Every problem raises :class:`AvatarFileError` (a ValueError) naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Optional

import torch

from .._version import __version__
from ..flame import FlameModel, flame_fingerprint
from ..flame.atomic import atomic_write

# (no import of .avatar: Avatar.save / Avatar.load call these functions)
__all__ = ["AvatarFileError", "save_avatar", "read_avatar", "FORMAT", "FORMAT_VERSION"]

FORMAT = "ffavatar"
FORMAT_VERSION = 1
_CORE = ("anchor_idx", "anchor_weights", "means", "offsets", "quats", "scales", "opacities", "colors", "betas_shape")
_VIEWS = ("expr", "jaw_pose", "eyes_pose", "neck_pose", "rotation", "translation", "viewmats", "Ks")
_VIEW_SHAPES = {"jaw_pose": (3,), "eyes_pose": (6,), "neck_pose": (3,), "rotation": (3,), "translation": (3,),
                "viewmats": (4, 4), "Ks": (3, 3)}
_RESIDUALS = ("offsets", "rotations", "scales", "opacities", "colors")
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class AvatarFileError(ValueError):
    """An ``.ffavatar`` file is missing, truncated, corrupt, foreign, too new, malformed, or made for
    another FLAME model (the message names the file and the problem)."""


def _checksum(meta: dict, tensors: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "content_sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\n{name} {str(t.dtype).replace('torch.', '')} {list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _tensors(avatar) -> dict:
    out = {k: getattr(avatar, k) for k in _CORE}
    out["anchor_idx"] = out["anchor_idx"].long()
    if avatar.residuals is not None:
        out.update({f"residual.{k}": v for k, v in avatar.residuals.tensors().items()})
    out.update({f"views.{k}": getattr(avatar, k) for k in _VIEWS if getattr(avatar, k) is not None})
    # own copies: slices of one tensor (the estimator's per-view outputs) share storage, which
    # safetensors refuses
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in out.items()}


def _metadata(avatar) -> dict:
    n_expr = avatar.n_expr if avatar.n_expr is not None else (avatar.expr.shape[1] if avatar.expr is not None else None)
    return {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "flame_fingerprint": avatar.flame_fingerprint or "", "n_shape": str(avatar.betas_shape.shape[0]),
            "n_expr": "" if n_expr is None else str(int(n_expr)), "num_gaussians": str(avatar.num_gaussians),
            "units": "meters", "camera_convention": "opencv", "quaternion_order": "wxyz",
            "image_size": "" if avatar.image_size is None else str(int(avatar.image_size)),
            "library": "ffavatar", "library_version": __version__}


def _write_file(path, tensors: dict, meta: dict) -> None:
    """Serialize ``tensors`` with ``meta`` + its checksum, atomically (tests use it for odd files)."""
    from safetensors.torch import save
    meta = dict(meta)
    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    meta["content_sha256"] = _checksum(meta, tensors)
    atomic_write(path, save(tensors, metadata=meta), error=AvatarFileError)


def save_avatar(avatar, path: "str | os.PathLike") -> None:
    """Write an :class:`~ffavatar.avatar.Avatar` to ``path`` (one safetensors file; atomic: a failed
    write keeps the old file). Same as ``avatar.save(path)``."""
    if not all(hasattr(avatar, k) for k in (*_CORE, "residuals", "flame_fingerprint")):
        raise TypeError(f"save_avatar: avatar expected an Avatar, got {type(avatar).__name__}")
    _write_file(os.fspath(path), _tensors(avatar), _metadata(avatar))  # (clones twice: cheap beside the io)


# ---------------------------------------------------------------------------------- reading
def _parse(path: str, data: bytes) -> tuple[dict, dict]:
    """Check the safetensors structure; return (metadata, tensor entries)."""
    size = len(data)
    if size == 0:
        raise AvatarFileError(f"{path}: empty file (0 bytes), not an .ffavatar file")
    if size < 8:
        raise AvatarFileError(f"{path}: truncated or not a safetensors file ({size} bytes, fewer than the "
                              "8-byte header length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > size - 8:
        raise AvatarFileError(f"{path}: truncated or corrupt: the header length field says {n} bytes but "
                              f"only {size - 8} follow it")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvatarFileError(f"{path}: corrupt header (not valid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise AvatarFileError(f"{path}: corrupt header (a JSON {type(header).__name__}, expected an object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise AvatarFileError(f"{path}: corrupt header (__metadata__ is not a map of strings)")
    avail, spans = size - 8 - n, []
    for name, e in header.items():
        ok = isinstance(e, dict) and e.get("dtype") in _ITEMSIZE and isinstance(e.get("shape"), list) and \
            all(isinstance(d, int) and d >= 0 for d in e["shape"]) and isinstance(e.get("data_offsets"), list) and \
            len(e["data_offsets"]) == 2 and all(isinstance(d, int) and d >= 0 for d in e["data_offsets"])
        if not ok:
            raise AvatarFileError(f"{path}: corrupt header (bad entry for tensor {name!r}: {e!r:.120})")
        b, end = e["data_offsets"]
        count = 1
        for d in e["shape"]:
            count *= d
        if end - b != count * _ITEMSIZE[e["dtype"]]:
            raise AvatarFileError(f"{path}: corrupt header (tensor {name!r}: shape {e['shape']} {e['dtype']} needs "
                                  f"{count * _ITEMSIZE[e['dtype']]} bytes, its offsets span {end - b})")
        spans.append((b, end, name))
    spans.sort()
    pos = 0
    for b, end, name in spans:
        if b != pos:
            raise AvatarFileError(f"{path}: corrupt header (tensor {name!r} starts at byte {b} of the data, "
                                  f"expected {pos})")
        pos = end
    if pos > avail:
        raise AvatarFileError(f"{path}: truncated: the tensors need {pos} bytes of data but the file holds {avail} "
                              f"(file size {size} bytes)")
    if pos != avail:
        raise AvatarFileError(f"{path}: corrupt: {avail - pos} unexpected bytes after the tensor data "
                              "(header length or offsets damaged)")
    return meta or {}, header


def _check_shapes(path: str, t: dict, meta: dict) -> None:
    missing = [k for k in _CORE if k not in t]
    if missing:
        raise AvatarFileError(f"{path}: missing tensors {missing}")
    res = [k for k in _RESIDUALS if f"residual.{k}" in t]
    if res and len(res) != len(_RESIDUALS):
        raise AvatarFileError(f"{path}: incomplete residuals: has {res}, missing "
                              f"{[k for k in _RESIDUALS if k not in res]}")
    ai = t["anchor_idx"]
    if ai.dim() != 2 or not 1 <= ai.shape[1] <= 4 or ai.is_floating_point():
        raise AvatarFileError(f"{path}: tensor 'anchor_idx' expected shape [N,K] (K <= 4) of integers, got "
                              f"{list(ai.shape)} {ai.dtype}")
    N, K = ai.shape
    if meta.get("num_gaussians") not in (None, str(N)):
        raise AvatarFileError(f"{path}: metadata num_gaussians={meta['num_gaussians']} but 'anchor_idx' has N={N}")
    want = {"anchor_weights": [N, K], "means": [N, 3], "offsets": [N, 3], "quats": [N, 4], "scales": [N, 3],
            "opacities": [N], "colors": [N, 3], "betas_shape": [int(meta.get("n_shape") or -1)]}
    want.update({"residual.offsets": [N, 3], "residual.rotations": [N, 3], "residual.scales": [N, 3],
                 "residual.opacities": [N], "residual.colors": [N, 3]})
    views = {k: list(v.shape) for k, v in sorted(t.items()) if k.startswith("views.")}
    counts = {s[0] if s else None for s in views.values()}
    if len(counts) > 1:
        raise AvatarFileError(f"{path}: the per-view tensors disagree on the number of views: {views}")
    for k, shape in views.items():
        tail = _VIEW_SHAPES.get(k[6:], (shape[-1] if len(shape) == 2 else -1,))
        want[k] = [shape[0] if shape else -1, *tail]
    for k, shape in want.items():
        if k in t:
            if list(t[k].shape) != shape:
                raise AvatarFileError(f"{path}: tensor {k!r} expected shape {shape} (N={N}"
                                      f"{', n_shape from metadata' if k == 'betas_shape' else ''}), got "
                                      f"{list(t[k].shape)}")
            if k != "anchor_idx" and not t[k].is_floating_point():
                raise AvatarFileError(f"{path}: tensor {k!r} expected a floating dtype, got {t[k].dtype}")
    unknown = [k for k in t if k not in want and k not in _CORE]
    if unknown:
        raise AvatarFileError(f"{path}: unknown tensors {unknown} (written by a newer library?)")


def read_avatar(path: "str | os.PathLike", model: Optional[FlameModel] = None) -> dict:
    """Read an ``.ffavatar`` file: the keyword arguments of :class:`~ffavatar.avatar.Avatar` (CPU
    tensors, dtypes as stored; ``residuals`` a dict of tensors or None). ``Avatar.load`` builds it.

    Args:
        path: the file.
        model: optional FLAME model: its fingerprint must equal the avatar's, and it must have the
            avatar's anchor vertices and at least its shape coefficients.

    Raises:
        AvatarFileError: see the module docstring.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AvatarFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AvatarFileError(f"{path}: is a folder, not an .ffavatar file")
    with open(path, "rb") as f:
        data = f.read()
    meta, _ = _parse(path, data)
    if meta.get("format") != FORMAT:
        raise AvatarFileError(f"{path}: not an .ffavatar file (a safetensors file without ffavatar metadata; "
                              f"format {meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise AvatarFileError(f"{path}: corrupt metadata (format_version {meta.get('format_version')!r})") from None
    if version > FORMAT_VERSION:
        raise AvatarFileError(f"{path}: format_version {version} is newer than this library's {FORMAT_VERSION} "
                              f"(ffavatar {__version__}); upgrade ffavatar to read it")
    if version < 1:
        raise AvatarFileError(f"{path}: corrupt metadata (format_version {version})")
    from safetensors.torch import load
    try:
        t = load(data)
    except Exception as exc:  # safetensors' own error types
        raise AvatarFileError(f"{path}: corrupt safetensors data ({exc})") from None
    if "content_sha256" not in meta:
        raise AvatarFileError(f"{path}: no content checksum in the metadata (damaged or not written by ffavatar)")
    if _checksum(meta, t) != meta["content_sha256"]:
        raise AvatarFileError(f"{path}: corrupt: the content checksum does not match (the file was damaged "
                              "after it was written)")
    _check_shapes(path, t, meta)
    fp = meta.get("flame_fingerprint") or None
    if model is not None:
        if not isinstance(model, FlameModel):
            raise TypeError(f"load_avatar: model expected a FlameModel, got {type(model).__name__}")
        have = flame_fingerprint(model)
        if fp is not None and fp != have:
            raise AvatarFileError(f"{path}: made for the FLAME model {fp[:23]}..., but the given model is "
                                  f"{have[:23]}...; load it with the model the avatar was made with")
        top = int(t["anchor_idx"].max()) if t["anchor_idx"].numel() else -1
        if top >= model.num_vertices or t["betas_shape"].shape[0] > model.n_shape:
            raise AvatarFileError(f"{path}: does not fit the given model (anchor vertex {top}, "
                                  f"{t['betas_shape'].shape[0]} shape coefficients; the model has "
                                  f"{model.num_vertices} vertices, n_shape={model.n_shape})")
    kw = {k: t[k] for k in _CORE}
    kw["anchor_idx"] = kw["anchor_idx"].long()
    kw.update({k: t[f"views.{k}"] for k in _VIEWS if f"views.{k}" in t})
    kw["residuals"] = {k: t[f"residual.{k}"] for k in _RESIDUALS} if "residual.offsets" in t else None
    kw.update(flame_fingerprint=fp, n_expr=int(meta["n_expr"]) if meta.get("n_expr") else None,
              image_size=int(meta["image_size"]) if meta.get("image_size") else None)
    return kw
