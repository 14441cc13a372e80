"""``ffavatar personalize``: fit an avatar's per-Gaussian residuals to photos of the person.

Cameras file (``--cameras c.json``): one entry per image, in the order of IMAGES, OpenCV / gsplat
convention (x right, y down, z forward)::

    {"views": [{"viewmat": [[4 x 4] world-to-camera], "K": [[3 x 3] intrinsics in pixels],
                "expression": [n_expr floats, optional], "pose": [J*3 axis-angle floats, optional]}, ...]}

A bare list of such entries is accepted too. ``K`` is in the pixels of the image as given.
"""
from __future__ import annotations

import argparse
import json
import math
import time

from .animate import open_avatar
from .errors import CliError, check_device, check_input_file, check_output_path, check_positive
from .reconstruct import read_images

__all__ = ["add_parser", "run", "read_cameras"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``personalize`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser(
        "personalize", help="fit an avatar to photos of the person (per-Gaussian residuals)",
        description="Fit per-Gaussian residuals (offset, rotation, scale, opacity, colour) of an avatar to "
                    "photos with known cameras (and optionally FLAME expression / pose per photo), L1 + SSIM, "
                    "Adam. The cameras file is JSON: {\"views\": [{\"viewmat\": 4x4, \"K\": 3x3, "
                    "\"expression\": [...], \"pose\": [...]}, ...]}, one entry per image, in order.")
    p.add_argument("avatar", metavar="AVATAR", help="the avatar, .ffavatar")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photos (png / jpg), all of one size")
    p.add_argument("--cameras", required=True, help="cameras (and FLAME parameters) of the photos, .json")
    p.add_argument("--out", required=True, help="the personalized avatar, .ffavatar")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps (default: 500)")
    p.add_argument("--refine-expression", action="store_true", help="also fit each photo's expression")
    p.add_argument("--flame", default=None, metavar="MODEL",
                   help="the FLAME model the avatar was made with (default: the built-in synthetic head)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=run)
    return p


def read_cameras(path: str, views: int, n_expr: int, n_pose: int):
    """The cameras file -> (viewmats [V,4,4], Ks [V,3,3], expression [V,n_expr] or None, pose
    [V,n_pose] or None), all float32 CPU tensors. Errors: CliError naming the file and entry."""
    import torch
    check_input_file("personalize", "--cameras", path, "cameras file")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CliError("personalize", f"--cameras: {path!r} is not readable JSON ({exc})") from None
    entries = data.get("views") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise CliError("personalize", f"--cameras: {path!r} expected a list of views or {{\"views\": [...]}}")
    if len(entries) != views:
        raise CliError("personalize", f"--cameras: {path!r} has {len(entries)} views, but {views} images were given")

    def field(i, e, key, shape, optional=False):
        if not isinstance(e, dict) or key not in e:
            if optional:
                return None
            raise CliError("personalize", f"--cameras: view {i} of {path!r} has no {key!r}")
        try:
            t = torch.tensor(e[key], dtype=torch.float32)
        except (TypeError, ValueError):
            raise CliError("personalize", f"--cameras: view {i} {key!r} of {path!r} is not numeric") from None
        if tuple(t.shape) != shape:
            raise CliError("personalize", f"--cameras: view {i} {key!r} of {path!r} expected shape {list(shape)}, "
                                          f"got {list(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise CliError("personalize", f"--cameras: view {i} {key!r} of {path!r} has NaN or Inf")
        return t

    vm = torch.stack([field(i, e, "viewmat", (4, 4)) for i, e in enumerate(entries)])
    K = torch.stack([field(i, e, "K", (3, 3)) for i, e in enumerate(entries)])
    ex = [field(i, e, "expression", (n_expr,), optional=True) for i, e in enumerate(entries)]
    po = [field(i, e, "pose", (n_pose,), optional=True) for i, e in enumerate(entries)]
    for name, vals in (("expression", ex), ("pose", po)):
        if any(v is None for v in vals) and not all(v is None for v in vals):
            raise CliError("personalize", f"--cameras: give {name!r} for every view of {path!r} or for none")
    expr = None if ex[0] is None else torch.stack(ex)
    pose = None if po[0] is None else torch.stack(po)
    return vm, K, expr, pose


def run(args) -> int:
    """Run ``ffavatar personalize``; returns the exit status (failures raise CliError)."""
    out = check_output_path("personalize", "--out", args.out, (".ffavatar",))
    check_positive("personalize", "--steps", args.steps)
    device = check_device("personalize", args.device)
    t0 = time.perf_counter()
    avatar, model = open_avatar("personalize", args.avatar, args.flame, device)
    images = read_images(args.images, "personalize")                        # [V,3,H,W] uint8
    vm, K, expr, pose = read_cameras(args.cameras, images.shape[0], model.n_expr, model.num_joints * 3)
    fitted, hist = avatar.personalize(model, images.to(device), vm.to(device), K.to(device),
                                      None if expr is None else expr.to(device),
                                      None if pose is None else pose.to(device), steps=args.steps,
                                      refine_expression=args.refine_expression, progress=not args.no_progress)
    fitted.save(out)                                          # atomic (temp file + rename)
    last = hist.loss[-1][1] if hist.loss else math.nan
    print(f"ffavatar personalize: {images.shape[0]} views {images.shape[3]}x{images.shape[2]}, {args.steps} steps "
          f"on {device} in {time.perf_counter() - t0:.1f} s (fit {hist.train_s:.1f} s), final loss {last:.4f} "
          f"-> {args.out}", flush=True)
    return 0
