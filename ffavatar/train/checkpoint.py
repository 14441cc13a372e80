"""Training checkpoints: one safetensors file that resumes a run exactly.

Tensors: ``model/<state key>``; ``optim/<param index>/<state name>`` (AdamW's step, exp_avg,
exp_avg_sq); ``rng/<rank>/torch``, ``rng/<rank>/cuda/<device>``, ``rng/<rank>/numpy`` (every
process's generator states). JSON metadata (safetensors metadata is str -> str): ``format``,
``version``, ``step``, ``config``, ``preset``, ``optim_groups`` (AdamW's param_groups),
``scheduler`` (its state_dict), ``data`` (the data position: the next step and the world size),
``rng_python`` / ``rng_numpy`` (per rank: Python's ``random`` state, numpy's scalar fields).

Written atomically (:func:`ffavatar.flame.atomic.atomic_write`: temp file in the same folder,
fsync, ``os.replace``, folder fsync): an interrupted write leaves the previous checkpoint intact.
The file is built in memory first (``safetensors.torch.save``), which costs one copy of the
checkpoint's size in host memory.
"""
from __future__ import annotations

import json
import os
import random
from typing import Optional

import numpy as np
import torch

from ffavatar.flame.atomic import atomic_write
from ffavatar.flame.versioned import read_versioned

__all__ = ["CheckpointError", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint",
           "Checkpoint"]

FORMAT = "ffavatar.train.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, foreign or newer than this library."""


def rng_state() -> dict:
    """Every generator a training step may draw from: torch CPU, CUDA (all devices), Python, numpy."""
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached": float(cached)}
    return st


def set_rng_state(st: dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def _flatten_optimizer(sd: dict) -> tuple[dict, list]:
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim/{idx}/{name}"] = t
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict, groups: list) -> dict:
    state: dict = {}
    for key, t in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: "str | os.PathLike", *, model: torch.nn.Module, optimizer, scheduler, step: int,
                    data_state: dict, rng_states: list, config_json: str = "{}", preset_json: str = "{}") -> None:
    """Write a checkpoint (see the module docstring). ``rng_states``: one :func:`rng_state` per
    rank (rank order); ``data_state``: JSON-able data position."""
    from safetensors.torch import save
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_t, groups = _flatten_optimizer(optimizer.state_dict())
    tensors.update({k: v.detach().cpu().contiguous() for k, v in opt_t.items()})
    py, npy = [], []
    for r, st in enumerate(rng_states):
        tensors[f"rng/{r}/torch"] = st["torch"].cpu().contiguous()
        for d, c in enumerate(st.get("cuda", [])):
            tensors[f"rng/{r}/cuda/{d}"] = c.cpu().contiguous()
        tensors[f"rng/{r}/numpy"] = st["numpy"]["keys"].contiguous()
        py.append([st["python"][0], list(st["python"][1]), st["python"][2]])
        npy.append({k: v for k, v in st["numpy"].items() if k != "keys"})
    meta = {"format": FORMAT, "version": str(VERSION), "step": str(int(step)), "config": config_json,
            "preset": preset_json, "optim_groups": json.dumps(groups), "scheduler": json.dumps(scheduler.state_dict()),
            "data": json.dumps(data_state), "rng_python": json.dumps(py), "rng_numpy": json.dumps(npy)}
    atomic_write(path, save(tensors, metadata=meta), error=CheckpointError)


class Checkpoint:
    """A checkpoint read back: ``step``, ``config`` (dict), ``preset_json``, ``data`` (dict), ``model_state``,
    ``optimizer_state`` (AdamW state_dict), ``scheduler_state``, ``rng(rank)``."""

    def __init__(self, path: str, tensors: dict, meta: dict):
        self.path = path
        try:
            self.step = int(meta["step"])
            self.config = json.loads(meta.get("config", "{}"))
            self.data = json.loads(meta["data"])
            self.scheduler_state = json.loads(meta["scheduler"])
            groups = json.loads(meta["optim_groups"])
            self._py = json.loads(meta["rng_python"])
            self._np = json.loads(meta["rng_numpy"])
            self.preset_json = meta.get("preset", "{}")
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc})") from None
        self.model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        self.optimizer_state = _unflatten_optimizer(tensors, groups)
        self._tensors = tensors

    @property
    def world_size(self) -> int:
        return len(self._py)

    def rng(self, rank: int) -> dict:
        """The generator states of ``rank`` (rank 0's when the checkpoint has fewer ranks)."""
        r = rank if rank < self.world_size else 0
        t = self._tensors
        cuda = [t[k] for k in sorted((k for k in t if k.startswith(f"rng/{r}/cuda/")),
                                     key=lambda k: int(k.rsplit("/", 1)[1]))]
        st = {"torch": t[f"rng/{r}/torch"], "python": self._py[r],
              "numpy": dict(self._np[r], keys=t[f"rng/{r}/numpy"])}
        if cuda:
            st["cuda"] = cuda
        return st


def load_checkpoint(path: "str | os.PathLike") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (CPU tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    tensors, meta = read_versioned(path, FORMAT, VERSION, CheckpointError, "a training checkpoint")
    return Checkpoint(path, tensors, meta)


def latest(out: str) -> Optional[str]:
    """``out/checkpoint.safetensors`` if it exists."""
    p = os.path.join(out, "checkpoint.safetensors")
    return p if os.path.isfile(p) else None
