"""Training configuration: a dataclass, read from a JSON or TOML file.

Example (TOML)::

    preset = "small"
    steps = 20000
    batch = 4            # identities per step per process
    lr = 3e-4
    out = "runs/small"
    [data]               # ffavatar.train.data_synthetic.SyntheticConfig
    image_size = 128
    num_targets = 8
    [loss]               # ffavatar.train.objective.LossWeights
    inputs = 0.5

Unknown keys are errors (naming the key), so a typo never trains silently with a default.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from .data_synthetic import SyntheticConfig
from .objective import LossWeights

__all__ = ["TrainConfig", "load_config", "ConfigError"]


class ConfigError(ValueError):
    """A configuration file that cannot be read or holds unknown / bad values."""


@dataclass
class TrainConfig:
    """Everything a run needs.

    preset: model preset name (``tiny``, ``small``, ``paper``); preset_overrides: fields of the
    :class:`~ffavatar.nn.Preset` to replace (e.g. ``{"max_queries": 256}``); encoder_weights: an
    optional DINOv2 weight file for the encoder; steps: optimizer steps in all; batch: identities per
    step per process; lr, weight_decay, betas: AdamW (fused on CUDA; no decay on biases, norms and
    1-D parameters); warmup: linear warm-up steps, then a cosine decay to ``min_lr_ratio * lr`` at
    ``steps``; clip: gradient-norm clipping (0: off); ckpt_every / eval_every / log_every: in
    steps (0: never; a checkpoint is also written at the end); eval_samples: held-out identities
    per evaluation (``eval_views`` conditioning views each); out: the run folder (metrics.jsonl,
    checkpoints, eval grids, TensorBoard); seed: model init and data; resume: continue from
    ``out/checkpoint.safetensors`` when it exists; bf16: bf16 autocast on CUDA (no effect on CPU);
    checkpointing: activation checkpointing of the Query-Former blocks; threads: CPU threads per
    process (0: the cores divided by the local processes); progress: a tqdm bar on rank 0;
    log_weight_digest: log every rank's weight digest after each step (tests: ranks in sync);
    flame: a FLAME model file (``generic_model.pkl`` / ``.npz``, :func:`ffavatar.flame.load_flame`)
    the network and the data are bound to (default: the built-in synthetic head);
    captures: capture folders in the VHAP layout (:mod:`ffavatar.train.data_captures`) to train on
    instead of synthetic identities (``data.image_size``, ``min_views`` / ``max_views``,
    ``num_targets``, ``background`` apply); eval_captures: held-out subjects for the evaluation
    (default: the training subjects' ``eval`` draws, which are not held-out subjects);
    attention: ``"kernel"`` (our cross_attention) or ``"sdpa"`` (PyTorch SDPA for every attention
    of the step; on a CPU much faster than the kernel's exact CPU path);
    time_limit: seconds of training in this process (0: none); once a step ends past it, the run
    writes its checkpoint and returns, to be resumed later (machines lent for a fixed time);
    deterministic: run under ``torch.use_deterministic_algorithms(True)`` (and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set): the rasterizer's backward sums in fixed point,
    skinning with a gradient runs as PyTorch operations, attention without atomics or autotuning, so
    a CUDA run is bit-for-bit repeatable (at a cost: RELIABILITY.md, "Determinism"); CPU runs are
    deterministic either way;
    data / loss: :class:`SyntheticConfig` / :class:`LossWeights`.
    """
    preset: str = "small"
    preset_overrides: dict = field(default_factory=dict)
    encoder_weights: Optional[str] = None
    steps: int = 1000
    batch: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.99)
    warmup: int = 100
    min_lr_ratio: float = 0.05
    clip: float = 1.0
    ckpt_every: int = 500
    eval_every: int = 500
    log_every: int = 1
    eval_samples: int = 8
    eval_views: int = 4
    out: str = "runs/ffavatar"
    seed: int = 0
    resume: bool = True
    bf16: bool = True
    checkpointing: bool = False
    threads: int = 0
    progress: bool = True
    log_weight_digest: bool = False
    time_limit: float = 0.0
    deterministic: bool = False
    attention: str = "kernel"
    flame: Optional[str] = None
    captures: list = field(default_factory=list)
    eval_captures: list = field(default_factory=list)
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = _build(SyntheticConfig, self.data, "data")
        if isinstance(self.loss, dict):
            self.loss = _build(LossWeights, self.loss, "loss")
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("steps", "batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "ckpt_every", "eval_every", "log_every", "threads"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"config: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("captures", "eval_captures"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"config: {name} must be a list of folder paths, got {v!r}")
        if self.attention not in ("kernel", "sdpa"):
            raise ConfigError(f"config: attention must be 'kernel' or 'sdpa', got {self.attention!r}")
        if self.time_limit < 0:
            raise ConfigError(f"config: time_limit must be >= 0 seconds, got {self.time_limit}")
        if self.lr <= 0:
            raise ConfigError(f"config: lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _build(cls, d, "config")


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a table / object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    try:
        return cls(**d)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: "str | os.PathLike", **overrides) -> TrainConfig:
    """Read a ``.json`` or ``.toml`` file into a :class:`TrainConfig`; ``overrides`` replace keys."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ImportError:          # Python 3.10
                import tomli as tomllib
            d = tomllib.loads(raw.decode("utf-8"))
        else:
            d = json.loads(raw.decode("utf-8"))
    except Exception as exc:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise ConfigError(f"{path}: not valid {'TOML' if path.endswith('.toml') else 'JSON'} ({exc})") from None
    d.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.from_dict(d)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
