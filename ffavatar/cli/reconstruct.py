"""``ffavatar reconstruct``: photos of a head -> an avatar file (``.ffavatar``) with the FFAvatar network."""
from __future__ import annotations

import argparse
import sys
import time
import warnings

from .errors import CliError, check_device, check_input_file, check_output_path

__all__ = ["add_parser", "run", "read_images"]

PRESETS = ("small", "paper", "tiny")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reconstruct`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser(
        "reconstruct", help="photos -> an avatar file (.ffavatar) with the FFAvatar network",
        description="Reconstruct an animatable 3D Gaussian head avatar from one or more photos of a head "
                    "(png / jpg, any size; alpha is dropped, grayscale becomes RGB; views of different sizes "
                    "are centre-cropped to a common square) in one pass of the FFAvatar network, and save it "
                    "as a .ffavatar file. Without --weights it uses the default model shipped with the package "
                    "(the small preset trained on synthetic heads: it has never seen a real face, so photos of "
                    "real people give an avatar of the synthetic head's kind). --preset without --weights "
                    "builds a randomly initialised network of that size (timing only: the avatar is "
                    "meaningless).")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="photos of the head (png / jpg), one per view")
    p.add_argument("--out", required=True, help="output avatar file, .ffavatar")
    p.add_argument("--weights", default=None, help="network checkpoint (.safetensors, FFAvatarModel.save_pretrained); "
                                                   "its preset comes with it (default: the shipped model)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="a randomly initialised network of this size instead of the shipped model (timing "
                        "only): small, paper (the paper's 868M parameters, for a GPU) or tiny (tests)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device of the network (default: cuda when available, else cpu)")
    p.set_defaults(run=run)
    return p


def _to_rgb_uint8(a, path: str):
    """[H,W], [H,W,1..4] array of any numeric dtype -> [H,W,3] uint8 (alpha dropped)."""
    import numpy as np
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5
        elif np.issubdtype(a.dtype, np.integer):
            top = 65535.0 if a.max(initial=0) > 255 else 255.0       # 16-bit images
            a = np.clip(a.astype(np.float64), 0, top) * (255.0 / top) + 0.5
        else:
            raise ValueError(f"unsupported pixel type {a.dtype}")
        a = a.astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected a single image of shape [H,W] or [H,W,1..4], got {list(a.shape)}")
    if a.shape[2] <= 2:                      # gray (+ alpha)
        a = np.repeat(a[..., :1], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def read_image(path: str, command: str = "reconstruct"):
    """One photo -> [H,W,3] uint8 (EXIF orientation applied; the first frame of an animated file).

    Raises:
        CliError: naming the file when it is missing or not a readable image.
    """
    import imageio.v3 as iio
    check_input_file(command, "IMAGES", path, "image")
    try:
        props = iio.improps(path, plugin="pillow", index=0)
        if props.dtype.name in ("uint8", "bool"):
            # pillow converts palette, gray, gray+alpha, RGBA (alpha dropped), CMYK to RGB
            a = iio.imread(path, plugin="pillow", index=0, mode="RGB", rotate=True)
        else:                                 # 16-bit / float: convert here (pillow would clip)
            a = iio.imread(path, plugin="pillow", index=0, rotate=True)
        return _to_rgb_uint8(a, path)
    except Exception as exc:  # noqa: BLE001 -- pillow / imageio raise many types for bad files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "can not handle" in msg or "cannot identify" in msg:
            msg = "not an image format it can read, e.g. png or jpg"
        raise CliError(command, f"cannot read the image {path!r} ({msg})") from None


def read_images(paths, command: str = "reconstruct"):
    """Photos -> [V,3,H,W] uint8 tensor. Views of different sizes are centre-cropped to squares of
    the smallest side among them and resized to it (antialiased), which is what the network's own
    preprocessing (resize the shorter side, centre crop) does with each anyway."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    arrays = [read_image(p, command) for p in paths]
    if len({a.shape for a in arrays}) == 1:
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    side = min(min(a.shape[:2]) for a in arrays)
    out = []
    for a in arrays:
        h, w = a.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = torch.from_numpy(np.ascontiguousarray(a[top:top + s, left:left + s])).permute(2, 0, 1)[None].float()
        if s != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out, 0)


def run(args) -> int:
    """Run ``ffavatar reconstruct``; returns the exit status (failures raise CliError)."""
    out = check_output_path("reconstruct", "--out", args.out, (".ffavatar",))
    if args.weights is not None and args.preset is not None:
        raise CliError("reconstruct", "give --weights or --preset, not both (a checkpoint carries its preset)")
    device = check_device("reconstruct", args.device)
    if args.weights is not None:
        check_input_file("reconstruct", "--weights", args.weights, "weights file")
    t0 = time.perf_counter()
    images = read_images(args.images)                                      # [V,3,H,W] uint8

    import torch
    from ..nn import FFAvatarModel
    from ..nn.pretrained import has_default_weights
    if args.weights is not None:
        try:
            net = FFAvatarModel.from_pretrained(args.weights, device=device)
        except (ValueError, OSError) as exc:
            raise CliError("reconstruct", f"--weights: {str(exc).splitlines()[0]}") from None
        what = f"weights {args.weights}"
    elif args.preset is None and has_default_weights():
        net = FFAvatarModel.from_pretrained(device=device)
        what = "the shipped default model"
    else:
        preset = args.preset or "small"
        why = ("--preset asks for" if args.preset else
               "this installation lacks the shipped weights, so it uses")
        print(f"ffavatar reconstruct: warning: {why} a randomly initialised network: the avatar is "
              f"meaningless", file=sys.stderr, flush=True)
        net = FFAvatarModel.from_preset(preset).to(device).eval()
        what = f"preset {preset}, random weights"
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FFAvatarModel: no checkpoint loaded")   # said above, once
        avatar = net.reconstruct(images.to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    t_net = time.perf_counter() - t1
    avatar.save(out)
    V, _, H, W = images.shape
    print(f"ffavatar reconstruct: {V} view{'s' if V != 1 else ''} ({W}x{H}) -> {avatar.num_gaussians} Gaussians "
          f"({what}, device {device}), network {t_net * 1e3:.0f} ms, wall {time.perf_counter() - t0:.1f} s "
          f"-> {args.out}", flush=True)
    return 0
