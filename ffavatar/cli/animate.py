"""``ffavatar animate``: render an avatar driven by a motion file (or the demo's motion) to a video.

Also the helpers ``export`` shares: opening an avatar with its FLAME model, reading a motion.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

from .errors import (CliError, atomic_output, check_device, check_input_file, check_output_path,
                     check_positive)

__all__ = ["add_parser", "run", "open_avatar", "read_motion", "front_camera", "BACKGROUND"]

BACKGROUND = (0.08, 0.09, 0.11)     # the demo's


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``animate`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser(
        "animate", help="render an avatar driven by a motion file (.npz) to a video (mp4 or gif)",
        description="Load an avatar (.ffavatar), drive it with the FLAME expression / pose sequence of a motion "
                    "file (.npz with the keys face trackers write: expr, jaw_pose, eyes_pose, neck_pose, rotation, "
                    "translation; see ffavatar.flame.motion_io) or, without --motion, with the demo's procedural "
                    "talking-head motion, render every frame from a fixed front camera and write a video. The "
                    "avatar keeps its own identity (a 'shape' in the motion file is not used); translations are "
                    "applied relative to the first frame. Prints one summary line.")
    p.add_argument("avatar", metavar="AVATAR", help="the avatar, .ffavatar")
    p.add_argument("--motion", default=None, help="motion file, .npz (default: the demo's procedural motion)")
    p.add_argument("--out", required=True, help="output video, .mp4 (H.264) or .gif")
    p.add_argument("--size", type=int, default=512, help="frame width and height in pixels (default: 512)")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the video (default: the motion file's fps, else 24)")
    p.add_argument("--frames", type=int, default=None,
                   help="number of frames: the first N of the motion (default: all of it; 48 for the demo motion)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="rendering device (default: cuda when available, else cpu)")
    p.add_argument("--batch", type=int, default=None,
                   help="frames rendered per batched call (default: 16 on cuda, 4 on cpu)")
    p.add_argument("--flame", default=None, metavar="MODEL",
                   help="the FLAME model the avatar was made with (generic_model.pkl / .npz; default: the "
                        "built-in synthetic head, which the network's avatars use)")
    p.add_argument("--lit", action="store_true",
                   help="shade with camera-attached lights (default: the avatar's colours as they are)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)
    return p


def front_camera(size: int, device="cpu"):
    """The fixed front camera: viewmat [4,4] (world-to-camera) and K [3,3] for size x size pixels."""
    from ..avatar.engine import front_camera as _front
    return _front(size, size, device)


def open_avatar(command: str, path: str, flame: "str | None", device: str):
    """Read the avatar and its FLAME model (the synthetic head unless ``flame`` names a file), the
    fingerprint checked -> (avatar on ``device``, model on ``device``). Errors: CliError."""
    check_input_file(command, "AVATAR", path, "avatar file")
    from ..avatar import Avatar, AvatarFileError
    from ..flame import FlameFileError, load_flame, synthetic_head
    if flame is None:
        model = synthetic_head()
    else:
        check_input_file(command, "--flame", flame, "FLAME model file")
        try:
            model = load_flame(flame)
        except (FlameFileError, ValueError, TypeError) as exc:
            raise CliError(command, f"--flame: {str(exc).splitlines()[0]}") from None
    try:
        avatar = Avatar.load(path, model=model)
    except AvatarFileError as exc:
        msg = str(exc).splitlines()[0]
        if flame is None and "made for the FLAME model" in msg:
            msg += " (pass it with --flame MODEL)"
        raise CliError(command, msg) from None
    return avatar.to(device), model.to(device)


def read_motion(command: str, path: "str | None", model, frames: "int | None", fps: "float | None"):
    """The frames to render: (expression [T,n_expr], pose [T,J*3], translation [T,3] relative to the
    first frame, fps, a description). ``path`` None: the demo's procedural motion (``frames`` or 48)."""
    import torch
    from ..flame import MotionFileError, load_motion, motion_script
    if path is None:
        T = 48 if frames is None else frames
        fps = 24.0 if fps is None else fps
        betas, pose = motion_script(T, model.n_shape, model.n_expr, num_joints=model.num_joints, fps=fps,
                                    dtype=model.dtype, device=model.device)
        expr = betas[:, model.n_shape:].contiguous()
        return expr, pose, torch.zeros(T, 3, dtype=model.dtype, device=model.device), fps, "the demo's motion"
    check_input_file(command, "--motion", path, "motion file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            m = load_motion(path, model)
        except (MotionFileError, ValueError) as exc:
            raise CliError(command, str(exc).splitlines()[0]) from None
    for w in caught:                                  # one line each, not Python's two-line warnings
        print(f"ffavatar {command}: note: {str(w.message).splitlines()[0]}", file=sys.stderr)
    T = m.num_frames
    if T < 1:
        raise CliError(command, f"--motion: {path!r} has no frames")
    if frames is not None:
        if frames > T:
            raise CliError(command, f"--frames {frames}, but the motion {path!r} has only {T} frames")
        T = frames
    tr = m.translation[:T] - m.translation[:1]
    fps = fps if fps is not None else (m.fps or 24.0)
    return m.expression[:T].contiguous(), m.pose[:T].contiguous(), tr.contiguous(), fps, path


def run(args) -> int:
    """Run ``ffavatar animate``; returns the exit status (failures raise CliError)."""
    check_positive("animate", "--size", args.size, minimum=16, maximum=4096)
    check_positive("animate", "--frames", args.frames)
    check_positive("animate", "--batch", args.batch)
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise CliError("animate", f"--fps must be a finite number > 0, got {args.fps}")
    device = check_device("animate", args.device)
    out = check_output_path("animate", "--out", args.out, (".mp4", ".gif"))
    batch = args.batch if args.batch is not None else (16 if device == "cuda" else 4)

    t0 = time.perf_counter()
    avatar, model = open_avatar("animate", args.avatar, args.flame, device)
    expr, pose, transl, fps, source = read_motion("animate", args.motion, model, args.frames, args.fps)
    T = expr.shape[0]

    import torch
    from tqdm import tqdm
    from ..render import VideoWriter
    engine = avatar.engine(model, args.size, args.size, batch=batch, background=BACKGROUND, lit=args.lit)
    print(f"ffavatar animate: {avatar.num_gaussians} Gaussians on {device}, {T} frames of {source}; "
          f"{engine.backend.description}{', replayed from a CUDA graph' if engine.uses_graph else ''}", flush=True)
    t_setup = time.perf_counter() - t0
    write_s = 0.0
    with atomic_output(out) as tmp:
        with VideoWriter(tmp, fps=fps) as writer, \
                tqdm(total=T, unit="frame", disable=True if args.no_progress else None, file=sys.stderr) as bar:
            t1 = time.perf_counter()
            for s in range(0, T, batch):
                e = min(T, s + batch)
                imgs = engine.render(expr[s:e], pose[s:e], translation=transl[s:e], copy=False)
                frames = (imgs * 255.0 + 0.5).to(torch.uint8).cpu().numpy()     # syncs the device
                tw = time.perf_counter()
                for f in frames:
                    writer.write(f)
                write_s += time.perf_counter() - tw
                bar.update(len(frames))
            render_s = max(time.perf_counter() - t1 - write_s, 1e-9)
        if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
            raise CliError("animate", f"--out: the video {args.out!r} was not written")
    wall = time.perf_counter() - t0
    print(f"ffavatar animate: {T} frames, {args.size}x{args.size}, device {device}, wall {wall:.1f} s "
          f"(setup {t_setup:.1f} s, render {render_s:.1f} s), {T / render_s:.2f} FPS rendering, "
          f"video at {fps:g} fps -> {args.out}", flush=True)
    return 0
