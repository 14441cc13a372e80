"""Reading our safetensors files that carry a ``format`` name and a ``version`` in their metadata
(network checkpoints, training checkpoints): one place for the read and the two checks."""
from __future__ import annotations

__all__ = ["read_versioned"]


def read_versioned(path: str, fmt: str, version: int, error: type, kind: str) -> tuple[dict, dict]:
    """(tensors on the CPU, metadata) of ``path``; ``error`` naming the file when it is not a readable
    safetensors file, its ``format`` is not ``fmt`` ("not <kind>") or its version is newer than
    ``version``."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise error(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != fmt:
        raise error(f"{path}: not {kind} (format {meta.get('format')!r})")
    if int(meta.get("version", "0")) > version:
        raise error(f"{path}: checkpoint version {meta['version']} is newer than this library's {version}")
    return tensors, meta
