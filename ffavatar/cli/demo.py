"""``ffavatar demo``: the system end to end, to a video file.

``--mode avatar`` (the default when the shipped model is installed): an unseen synthetic identity is
rendered from 4 views, the shipped network reconstructs an avatar from them in one pass, and the
avatar is animated (the demo's motion, an orbiting camera); each video frame shows the 4 input views
(left, 2 x 2) beside the animated avatar (right). ``--mode head``: the built-in synthetic head's
~80K Gaussians animated (the kernels alone)."""
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
    d.add_argument("--mode", choices=("avatar", "head"), default=None,
                   help="avatar: photos of an unseen synthetic identity -> the shipped network -> an animated "
                        "avatar, beside its input views (default when the shipped model is installed); head: "
                        "the built-in head's ~80K Gaussians animated")
    d.add_argument("--identity", type=int, default=0, help="which unseen synthetic identity (--mode avatar)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.set_defaults(run=run)
    return d


def run(args) -> int:
    """Run ``ffavatar demo``; returns the exit status (failures raise CliError)."""
    import torch
    from tqdm import tqdm

    from ..flame import canonical_gaussians, synthetic_head
    from ..nn.pretrained import has_default_weights
    from ..render import Animator, select_backend

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
    mode = args.mode or ("avatar" if has_default_weights() else "head")
    if mode == "avatar" and not has_default_weights():
        raise CliError("demo", "--mode avatar needs the shipped model, which this installation lacks "
                       "(reinstall ffavatar, or use --mode head)")
    if args.identity < 0:
        raise CliError("demo", f"--identity must be >= 0, got {args.identity}")

    t0 = time.perf_counter()
    backend = select_backend(device, args.backend)
    if mode == "avatar":
        batches, what = _avatar_batches(args, device, backend, batch)
    else:
        model = synthetic_head(device=device)
        gaussians = canonical_gaussians(model)
        anim = Animator(model, gaussians, args.size, device=device, backend=backend, fps=args.fps)
        batches, what = anim.render_sequence(args.frames, batch), f"the synthetic head, {gaussians.num_gaussians} Gaussians"
    print(f"ffavatar demo: {what} on {device}; {backend.description}", flush=True)
    t_setup = time.perf_counter() - t0
    _write(args, out, batches, device, t0, t_setup)
    return 0


def _avatar_batches(args, device: str, backend, batch: int):
    """Reconstruct an unseen synthetic identity with the shipped model -> (a generator of [b,H,2W,3]
    frames: input views | animated avatar, a description)."""
    import torch
    import torch.nn.functional as F

    from ..flame import motion_script, synthetic_head
    from ..geometry import intrinsics, orbit
    from ..nn import FFAvatarModel
    from ..train.data_synthetic import SyntheticConfig, SyntheticHeads

    net = FFAvatarModel.from_pretrained(device=device)
    import json
    cfg = json.loads(net.metadata.get("train_config", "{}")).get("data", {})
    data = SyntheticHeads(SyntheticConfig(**cfg) if cfg else SyntheticConfig(image_size=128), seed=2026, split="demo")
    sample = data.sample(args.identity, device=device, num_views=4)
    t0 = time.perf_counter()
    avatar = net.reconstruct(sample.images)
    if device == "cuda":
        torch.cuda.synchronize()
    rec_ms = 1e3 * (time.perf_counter() - t0)
    model = synthetic_head(device=device)
    S, half = args.size, args.size // 2
    cells = F.interpolate(sample.images, size=(half, half), mode="bilinear", align_corners=False,
                          antialias=sample.images.shape[-1] > half).clamp(0, 1)          # [4,3,h,h]
    grid = torch.zeros(S, S, 3, device=device)
    for i in range(4):
        r, c = divmod(i, 2)
        grid[r * half:(r + 1) * half, c * half:(c + 1) * half] = cells[i].permute(1, 2, 0)
    betas, pose = motion_script(args.frames, model.n_shape, model.n_expr, num_joints=model.num_joints,
                                fps=args.fps, device=device)
    expr = betas[:, model.n_shape:].contiguous()
    views, K = orbit(args.frames, device=device), intrinsics(S, S, 22.0, device=device)

    # the animation engine: on CUDA the frames are replayed from a CUDA graph
    engine = avatar.engine(model, S, S, K=K, batch=batch, backend=backend, background=data.config.background)

    def gen():
        for s in range(0, args.frames, batch):
            e = min(args.frames, s + batch)
            imgs = engine.render(expr[s:e], pose[s:e], viewmats=views[s:e], copy=False)
            yield torch.cat([grid.expand(e - s, S, S, 3), imgs], 2)
    what = (f"an unseen synthetic identity, 4 views of {sample.images.shape[-1]} px -> the shipped network "
            f"({net.preset.name}, {rec_ms:.0f} ms) -> {avatar.num_gaussians} Gaussians, animated")
    return gen(), what


def _write(args, out, batches, device: str, t0: float, t_setup: float) -> None:
    import torch
    from tqdm import tqdm
    from ..render import VideoWriter
    with atomic_output(out) as tmp:             # a failure leaves no partial video
        with VideoWriter(tmp, fps=args.fps) as writer, \
                tqdm(total=args.frames, unit="frame", disable=args.no_progress, file=sys.stderr) as bar:
            t1 = time.perf_counter()
            write_s = 0.0
            for imgs in batches:
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
