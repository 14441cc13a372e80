"""``ffavatar train CONFIG``: train FFAvatarModel on synthetic identities (few-to-many); the same as
``python -m ffavatar.train CONFIG`` and, on several GPUs, ``torchrun --nproc_per_node=N -m ffavatar.train CONFIG``."""
from __future__ import annotations

import argparse

from .errors import CliError, check_input_file

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "train", help="train the network on synthetic identities (config file: JSON or TOML)",
        description="Train FFAvatarModel with the few-to-many objective on synthetic identities rendered on the "
                    "fly. Resumes from the run folder's checkpoint unless --no-resume. For several GPUs use "
                    "`torchrun --nproc_per_node=N -m ffavatar.train CONFIG`.")
    p.add_argument("config", help="a .json or .toml training configuration (ffavatar.train.TrainConfig)")
    p.add_argument("--out", help="run folder (overrides the config's 'out')")
    p.add_argument("--steps", type=int, help="total steps (overrides the config's 'steps')")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run folder has a checkpoint")
    p.add_argument("--deterministic", action="store_true",
                   help="bit-for-bit repeatable CUDA training (torch.use_deterministic_algorithms; slower)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    """Run ``ffavatar train``."""
    check_input_file("train", "CONFIG", args.config)
    if args.steps is not None and args.steps < 1:
        raise CliError("train", f"--steps must be >= 1, got {args.steps}")
    from ..train.config import ConfigError, load_config
    from ..train.loop import train
    try:
        cfg = load_config(args.config, out=args.out, steps=args.steps, resume=False if args.no_resume else None,
                          deterministic=True if args.deterministic else None)
    except ConfigError as exc:
        raise CliError("train", str(exc)) from None
    summary = train(cfg)
    if summary["step"] and summary["losses"]:
        print(f"ffavatar train: step {summary['step']}, loss {summary['loss']:.4f}, run folder {summary['out']}")
    return 0
