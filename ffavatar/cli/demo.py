"""``ffavatar demo``: render the built-in synthetic head, animated, to a video file."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from .errors import CliError, atomic_output, check_output_path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand and its options to ``subparsers``."""
    d = subparsers.add_parser(
        "demo", help="render the animated synthetic head to a video (mp4 or gif)",
        description="Animate the built-in synthetic FLAME-structured head (expressions, jaw, eye and "
                    "head motion, an orbiting camera) as ~80K Gaussians and write a video. Uses the "
                    "compiled kernels when the extension is built for the device, else the PyTorch "
                    "reference twins; prints one summary line (frames, resolution, device, wall time, FPS).")
    d.add_argument("--out", default="demo.mp4", help="output video, .mp4 (H.264) or .gif (default: demo.mp4)")
    d.add_argument("--frames", type=int, default=48, help="number of frames (default: 48)")
    d.add_argument("--size", type=int, default=512, help="frame width and height in pixels (default: 512)")
    d.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="rendering device (default: cuda when available, else cpu)")
    d.add_argument("--fps", type=float, default=24.0, help="frame rate of the video and the motion (default: 24)")
    d.add_argument("--batch", type=int, default=None,
                   help="frames rendered per batched call (default: 16 on cuda, 4 on cpu)")
    d.add_argument("--backend", choices=("auto", "compiled", "reference"), default="auto",
                   help="kernel path: compiled ops when available (auto), compiled only, or the "
                        "PyTorch reference twins (default: auto)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.set_defaults(run=run)
    return d


def run(args) -> int:
    """Run ``ffavatar demo``; returns the exit status (failures raise CliError)."""
    import torch
    from tqdm import tqdm

    from ..flame import canonical_gaussians, synthetic_head
    from ..render import Animator, VideoWriter, select_backend

    if args.frames < 1:
        raise CliError("demo", f"--frames must be >= 1, got {args.frames}")
    if not 16 <= args.size <= 4096:
        raise CliError("demo", f"--size must be in [16, 4096], got {args.size}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise CliError("demo", f"--fps must be a finite number > 0, got {args.fps}")
    if args.batch is not None and args.batch < 1:
        raise CliError("demo", f"--batch must be >= 1, got {args.batch}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("demo", "--device cuda, but torch has no CUDA device here")
    out = check_output_path("demo", "--out", args.out, (".mp4", ".gif"))
    batch = args.batch if args.batch is not None else (16 if device == "cuda" else 4)

    t0 = time.perf_counter()
    backend = select_backend(device, args.backend)
    model = synthetic_head(device=device)
    gaussians = canonical_gaussians(model)
    anim = Animator(model, gaussians, args.size, device=device, backend=backend, fps=args.fps)
    print(f"ffavatar demo: {gaussians.num_gaussians} Gaussians on {device}; {backend.description}", flush=True)
    t_setup = time.perf_counter() - t0
    with atomic_output(out) as tmp:             # a failure leaves no partial video
        with VideoWriter(tmp, fps=args.fps) as writer, \
                tqdm(total=args.frames, unit="frame", disable=args.no_progress, file=sys.stderr) as bar:
            t1 = time.perf_counter()
            write_s = 0.0
            for imgs in anim.render_sequence(args.frames, batch):
                frames = (imgs * 255.0 + 0.5).to(torch.uint8).cpu().numpy()     # syncs the device
                tw = time.perf_counter()
                for f in frames:
                    writer.write(f)
                write_s += time.perf_counter() - tw
                bar.update(len(frames))
            render_s = time.perf_counter() - t1 - write_s
        if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
            raise CliError("demo", f"--out: the video {args.out!r} was not written")
    wall = time.perf_counter() - t0
    render_s = max(render_s, 1e-9)
    print(f"ffavatar demo: {args.frames} frames, {args.size}x{args.size}, device {device}, "
          f"wall {wall:.1f} s (setup {t_setup:.1f} s, render {render_s:.1f} s), "
          f"{args.frames / render_s:.2f} FPS rendering -> {args.out}", flush=True)
    return 0
