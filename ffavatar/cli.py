"""The ``ffavatar`` command line: ``ffavatar demo`` renders an animated head video, ``ffavatar info``
reports versions and which kernels are available."""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``ffavatar`` command (subcommands ``demo`` and ``info``)."""
    p = argparse.ArgumentParser(
        prog="ffavatar",
        description="Feed-forward 3D Gaussian head avatars: GPU kernels and a thin model layer.",
        epilog="Commands:\n  demo  render the built-in synthetic head, animated, to a video file\n"
               "  info  print versions, compiled-kernel availability and the registered ops\n\n"
               "Run `ffavatar <command> --help` for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{demo,info}")
    d = sub.add_parser(
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
    sub.add_parser("info", help="print versions, kernel availability and the registered torch ops",
                   description="Print library, torch and device versions, whether the compiled extension "
                               "and its CUDA kernels are present, and the torch.ops.ffavatar op list.")
    return p


def _demo(args) -> int:
    import torch
    from tqdm import tqdm

    from .animate import Animator, select_backend
    from .gaussians import canonical_gaussians
    from .synthetic import synthetic_head
    from .video import VideoWriter

    if args.frames < 1:
        raise SystemExit(f"ffavatar demo: --frames must be >= 1, got {args.frames}")
    if not 16 <= args.size <= 4096:
        raise SystemExit(f"ffavatar demo: --size must be in [16, 4096], got {args.size}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise SystemExit(f"ffavatar demo: --fps must be a finite number > 0, got {args.fps}")
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"ffavatar demo: --batch must be >= 1, got {args.batch}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ffavatar demo: --device cuda, but torch has no CUDA device here")
    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise SystemExit(f"ffavatar demo: --out must end in .mp4 or .gif, got {args.out!r}")
    batch = args.batch if args.batch is not None else (16 if device == "cuda" else 4)

    t0 = time.perf_counter()
    backend = select_backend(device, args.backend)
    model = synthetic_head(device=device)
    gaussians = canonical_gaussians(model)
    anim = Animator(model, gaussians, args.size, device=device, backend=backend, fps=args.fps)
    print(f"ffavatar demo: {gaussians.num_gaussians} Gaussians on {device}; {backend.description}", flush=True)
    t_setup = time.perf_counter() - t0
    with VideoWriter(args.out, fps=args.fps) as writer, \
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
    wall = time.perf_counter() - t0
    render_s = max(render_s, 1e-9)
    print(f"ffavatar demo: {args.frames} frames, {args.size}x{args.size}, device {device}, "
          f"wall {wall:.1f} s (setup {t_setup:.1f} s, render {render_s:.1f} s), "
          f"{args.frames / render_s:.2f} FPS rendering -> {args.out}", flush=True)
    return 0



def _info(args) -> int:
    import numpy
    import torch

    from . import __version__
    print(f"ffavatar {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}")
    cuda = torch.cuda.is_available()
    dev = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"CUDA available: {cuda} (torch CUDA {torch.version.cuda}); device: {dev}")
    try:
        import ffavatar_kernels
        from ffavatar_kernels import _ext
        loaded = _ext.load()
        print(f"ffavatar_kernels {getattr(ffavatar_kernels, '__version__', '?')}: compiled extension "
              f"{'loaded' if loaded else 'not available (' + _ext._error + ')'}")
        print(f"CUDA kernels compiled in: {_ext.has_cuda_kernels()}")
    except Exception as exc:  # a broken or partial install: report, do not crash
        print(f"ffavatar_kernels: import failed ({type(exc).__name__}: {exc})")
    ops = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ffavatar::"))
    print(f"torch.ops.ffavatar ({len(ops)}): {', '.join(ops) if ops else '(none registered)'}")
    return 0


def main(argv: "list[str] | None" = None) -> int:
    """Entry point of the ``ffavatar`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return _demo(args) if args.command == "demo" else _info(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
