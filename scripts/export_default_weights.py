"""A training checkpoint -> the shipped default weights (fp16 FFAvatarModel file).

    python scripts/export_default_weights.py runs/default_small/checkpoint.safetensors \
        [--metrics runs/default_small/metrics.jsonl] [--out ffavatar/nn/default_small.safetensors]

The file's metadata records the training step, the configuration and the last held-out evaluation
of the run (from metrics.jsonl), so `ffavatar info` and `model.metadata` say what the weights are.
"""
import argparse
import json
import os
import sys

import torch

import _paths  # noqa: F401  (puts the repository root on sys.path)
from ffavatar.flame import load_flame
from ffavatar.nn import FFAvatarModel, Preset
from ffavatar.nn.pretrained import default_weights_path
from ffavatar.train.checkpoint import load_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--metrics", default=None, help="the run's metrics.jsonl (default: beside the checkpoint)")
    p.add_argument("--out", default=default_weights_path())
    args = p.parse_args(argv)
    ck = load_checkpoint(args.checkpoint)
    # a run trained on captures is bound to its FLAME model (the config's `flame`), else the synthetic head
    flame = load_flame(ck.config["flame"]) if ck.config.get("flame") else None
    model = FFAvatarModel(Preset.from_json(ck.preset_json), flame)
    missing, unexpected = model.load_state_dict(ck.model_state, strict=False)
    if missing or unexpected:
        sys.exit(f"checkpoint does not fit its preset: missing {missing}, unexpected {unexpected}")
    metrics = args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "metrics.jsonl")
    last_eval = {}
    if os.path.isfile(metrics):
        for line in open(metrics):
            rec = json.loads(line)
            if any(k.startswith("eval/") for k in rec):
                last_eval = rec
    trained_on = (f"captures {ck.config['captures']}" if ck.config.get("captures") else
                  "synthetic identities of the embedded FLAME-topology head (ffavatar.train.data_synthetic); "
                  "not real faces")
    meta = {"trained_on": trained_on,
            "train_step": ck.step, "train_config": json.dumps(ck.config, sort_keys=True),
            "last_eval": json.dumps(last_eval, sort_keys=True)}
    model.save_pretrained(args.out, dtype=torch.float16, metadata=meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB), step {ck.step}, last eval {last_eval}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
