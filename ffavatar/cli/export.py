"""``ffavatar export``: an avatar's Gaussians as a standard 3DGS ``.ply`` (canonical or one posed frame)."""
from __future__ import annotations

import argparse
import time

from .animate import open_avatar, read_motion
from .errors import CliError, check_output_path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser(
        "export", help="write an avatar's Gaussians as a standard 3DGS .ply (opens in splat viewers)",
        description="Write the Gaussians of an avatar (.ffavatar) as the standard 3D Gaussian Splatting .ply "
                    "(Inria's layout: opacity logits, log scales, SH DC colours, wxyz rotations) that gsplat, "
                    "SuperSplat and other viewers open: the canonical frame (neutral expression and pose), or, "
                    "with --motion, frame --frame of a motion file (translation relative to its first frame, "
                    "as `ffavatar animate` renders it).")
    p.add_argument("avatar", metavar="AVATAR", help="the avatar, .ffavatar")
    p.add_argument("--ply", required=True, help="output splat file, .ply")
    p.add_argument("--motion", default=None, help="motion file (.npz): export one of its frames, posed")
    p.add_argument("--frame", type=int, default=None, help="frame of --motion to export (default: 0)")
    p.add_argument("--flame", default=None, metavar="MODEL",
                   help="the FLAME model the avatar was made with (default: the built-in synthetic head)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    """Run ``ffavatar export``; returns the exit status (failures raise CliError)."""
    if args.frame is not None and args.motion is None:
        raise CliError("export", "--frame needs --motion (the motion file whose frame to export)")
    if args.frame is not None and args.frame < 0:
        raise CliError("export", f"--frame must be >= 0, got {args.frame}")
    out = check_output_path("export", "--ply", args.ply, (".ply",))
    t0 = time.perf_counter()
    avatar, model = open_avatar("export", args.avatar, args.flame, "cpu")
    if args.motion is None:
        avatar.export_ply(out, model=model)
        what = "canonical frame"
    else:
        k = 0 if args.frame is None else args.frame
        expr, pose, transl, _, _ = read_motion("export", args.motion, model, None, None)
        if k >= expr.shape[0]:
            raise CliError("export", f"--frame {k}, but the motion {args.motion!r} has {expr.shape[0]} frames "
                                     f"(0..{expr.shape[0] - 1})")
        avatar.export_ply(out, expr[k], pose[k], model=model, translation=transl[k])
        what = f"frame {k} of {args.motion}"
    print(f"ffavatar export: {avatar.num_gaussians} Gaussians, {what}, {time.perf_counter() - t0:.1f} s "
          f"-> {args.ply}", flush=True)
    return 0
