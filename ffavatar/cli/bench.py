"""``ffavatar bench``: a short end-to-end timing on this machine (animation and reconstruction)."""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

from .errors import check_device, check_positive

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser(
        "bench", help="a short end-to-end timing on this machine (animation FPS, reconstruction ms)",
        description="Time the pipeline on this machine and print one table: animation (skinning + rendering "
                    "of the built-in synthetic head's ~80K canonical Gaussians, batched frames, the demo's "
                    "motion and camera) in frames per second, and reconstruction with the FFAvatar network "
                    "(random weights: the timing, not the result) from synthetic views rendered of the head. "
                    "Defaults are small on a CPU so that it finishes in seconds there.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device (default: cuda when available, else cpu)")
    p.add_argument("--size", type=int, default=None, help="frame width and height (default: 512 on cuda, 128 on cpu)")
    p.add_argument("--frames", type=int, default=None, help="frames timed (default: 32 on cuda, 8 on cpu)")
    p.add_argument("--batch", type=int, default=None, help="frames per batched call (default: 16 on cuda, 8 on cpu)")
    p.add_argument("--preset", choices=("small", "paper", "tiny"), default="small",
                   help="network preset timed for reconstruction (default: small)")
    p.add_argument("--views", type=int, default=4, help="input views of the reconstruction (default: 4)")
    p.set_defaults(run=run)
    return p


def _fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2f} ms"


def run(args) -> int:
    """Run ``ffavatar bench``; returns the exit status (failures raise CliError)."""
    check_positive("bench", "--size", args.size, minimum=16, maximum=4096)
    check_positive("bench", "--frames", args.frames)
    check_positive("bench", "--batch", args.batch)
    check_positive("bench", "--views", args.views, maximum=64)
    device = check_device("bench", args.device)
    cuda = device == "cuda"
    size = args.size or (512 if cuda else 128)
    frames = args.frames or (32 if cuda else 8)
    batch = min(args.batch or (16 if cuda else 8), frames)

    import torch
    from .._version import __version__
    from ..avatar import Avatar
    from ..flame import canonical_gaussians, synthetic_head
    from ..geometry import intrinsics, look_at
    from ..nn import FFAvatarModel, get_preset
    from ..render import Animator, select_backend

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rows = []
    t = time.perf_counter()
    backend = select_backend(device)
    model = synthetic_head(device=device)
    gaussians = canonical_gaussians(model)
    sync()
    rows.append(("setup", f"synthetic head + {gaussians.num_gaussians:,} canonical Gaussians",
                 f"{time.perf_counter() - t:.2f} s", ""))

    # animation: skin + render of `frames` frames in batches, after one warm-up call
    anim = Animator(model, gaussians, size, device=device, backend=backend)
    for _ in anim.render_sequence(batch if cuda else 1, batch):
        pass
    sync()
    t = time.perf_counter()
    n = 0
    for imgs in anim.render_sequence(frames, batch):
        n += imgs.shape[0]
    sync()
    dt = time.perf_counter() - t
    rows.append(("animate", f"{n} frames {size}x{size}, batches of {batch} (skin + render)",
                 f"{_fmt_ms(dt / n)}/frame", f"{n / dt:,.1f} FPS"))
    if cuda:   # the same work replayed from the AnimationEngine's CUDA graph (the mean-head avatar)
        from ..avatar import Avatar
        from ..flame.motion import motion_script
        from ..geometry import orbit
        eng = Avatar.from_canonical(model, gaussians).engine(model, size, size, batch=batch, lit=True,
                                                             backend=backend)
        betas, pose = motion_script(frames, model.n_shape, model.n_expr, num_joints=model.num_joints,
                                    device=device)
        expr, views = betas[:, model.n_shape:].contiguous(), orbit(frames, device=device)
        eng.render(expr[:batch], pose[:batch], viewmats=views[:batch])      # capture
        sync()
        t = time.perf_counter()
        for s0 in range(0, frames, batch):
            eng.render(expr[s0:s0 + batch], pose[s0:s0 + batch], viewmats=views[s0:s0 + batch], copy=False)
        sync()
        dt = time.perf_counter() - t
        rows.append(("animate (graph)", f"the same from a CUDA graph ({'on' if eng.uses_graph else 'off'})",
                     f"{_fmt_ms(dt / frames)}/frame", f"{frames / dt:,.1f} FPS"))

    # reconstruction from `views` synthetic views of the head at the preset's input size
    preset = get_preset(args.preset)
    S = preset.image_size
    az = torch.linspace(-0.6, 0.6, args.views) if args.views > 1 else torch.zeros(1)
    eye = torch.stack([0.75 * torch.sin(az), torch.full_like(az, -0.02), 0.75 * torch.cos(az)], -1)
    vm = look_at(eye, torch.tensor([0.0, -0.02, 0.0]).expand_as(eye)).to(device)
    head = Avatar.from_canonical(model, gaussians)
    with torch.no_grad():
        views = head.render(model, vm, intrinsics(S, S, 22.0, device=device), S, S, backend=backend,
                            background=(1.0, 1.0, 1.0), lit=True)               # [V,S,S,3]
    images = (views * 255 + 0.5).to(torch.uint8).permute(0, 3, 1, 2).contiguous()
    t = time.perf_counter()
    net = FFAvatarModel.from_preset(preset).to(device).eval()
    sync()
    t_build = time.perf_counter() - t
    times = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FFAvatarModel: no checkpoint loaded")
        for _ in range(4 if cuda else 1):          # on cuda: one warm-up, the median of three
            t = time.perf_counter()
            avatar = net.reconstruct(images)
            sync()
            times.append(time.perf_counter() - t)
    rec = statistics.median(times[1:]) if len(times) > 1 else times[0]
    rows.append(("reconstruct", f"preset {preset.name}, {args.views} views {S}x{S} -> {avatar.num_gaussians:,} "
                                f"Gaussians (random weights; build {t_build:.1f} s)", _fmt_ms(rec), ""))

    name = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"ffavatar {__version__} bench on {device} ({name}), torch {torch.__version__}; {backend.description}")
    widths = [max(len(r[i]) for r in rows + [("stage", "work", "time", "rate")]) for i in range(4)]
    for r in [("stage", "work", "time", "rate")] + rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0
