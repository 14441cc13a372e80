"""Training FFAvatarModel: synthetic identities rendered by our kernels (:mod:`.data_synthetic`), the
few-to-many objective (:mod:`.objective`), the distributed loop (:mod:`.loop`, ``python -m
ffavatar.train CONFIG`` or under ``torchrun``), exactly resumable checkpoints (:mod:`.checkpoint`)
and the held-out evaluation (:mod:`.evaluate`)."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, load_config
from .data_synthetic import SyntheticConfig, SyntheticHeads, SyntheticSample
from .evaluate import evaluate
from .loop import train
from .objective import FewToManyObjective, LossWeights

__all__ = ["TrainConfig", "load_config", "ConfigError", "SyntheticConfig", "SyntheticHeads", "SyntheticSample",
           "FewToManyObjective", "LossWeights", "train", "evaluate", "save_checkpoint", "load_checkpoint",
           "CheckpointError"]
