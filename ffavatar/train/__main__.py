"""``python -m ffavatar.train CONFIG [--out DIR] [--steps N] [--no-resume]`` (also under
``torchrun --nproc_per_node=N -m ffavatar.train CONFIG``)."""
from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .loop import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ffavatar.train",
                                description="Train FFAvatarModel on synthetic identities (few-to-many).")
    p.add_argument("config", help="a .json or .toml training configuration (ffavatar.train.TrainConfig)")
    p.add_argument("--out", help="run folder (overrides the config's 'out')")
    p.add_argument("--steps", type=int, help="total steps (overrides the config's 'steps')")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after this many seconds of training, checkpoint, and exit (resume later)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run folder has a checkpoint")
    p.add_argument("--deterministic", action="store_true",
                   help="bit-for-bit repeatable CUDA training (torch.use_deterministic_algorithms; slower)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, out=args.out, steps=args.steps, time_limit=args.time_limit,
                          resume=False if args.no_resume else None,
                          deterministic=True if args.deterministic else None)
    except ConfigError as exc:
        print(f"ffavatar.train: {exc}", file=sys.stderr)
        return 2
    summary = train(cfg)
    if summary["step"] and summary["losses"]:
        print(f"ffavatar.train: step {summary['step']}, loss {summary['loss']:.4f}, run folder {summary['out']}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
