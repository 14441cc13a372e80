"""``ffavatar info [AVATAR]``: versions, build information, kernel availability, the registered ops;
with an avatar file, also its metadata."""
from __future__ import annotations

import argparse
import platform

from .errors import CliError, check_input_file

__all__ = ["add_parser", "run", "avatar_lines"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("info", help="print versions, build information, kernel availability and the ops",
                              description="Print library, torch and device versions, how the compiled extension "
                                          "was built (torch, CUDA, architectures), whether its CUDA kernels are "
                                          "present, and the torch.ops.ffavatar op list; with an avatar file, also "
                                          "its metadata (format version, Gaussians, FLAME fingerprint, n_shape / "
                                          "n_expr, views).")
    p.add_argument("avatar", nargs="?", default=None, metavar="AVATAR", help="an avatar file (.ffavatar) to describe")
    p.set_defaults(run=run)
    return p


def avatar_lines(path: str) -> list:
    """The metadata of the avatar file ``path`` as printable lines (CliError for a bad file)."""
    check_input_file("info", "AVATAR", path, "avatar file")
    from ..avatar import Avatar, AvatarFileError
    from ..flame import synthetic_fingerprint
    try:
        a = Avatar.load(path)                      # checks structure, checksum, shapes
    except AvatarFileError as exc:
        raise CliError("info", str(exc).splitlines()[0]) from None
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    fp = a.flame_fingerprint
    which = "unknown" if fp is None else (f"{fp} (the built-in synthetic head)" if fp == synthetic_fingerprint()
                                          else f"{fp} (a FLAME model file: pass it with --flame)")
    n_expr = a.n_expr if a.n_expr is not None else "unknown"
    views = "none" if a.num_views == 0 else f"{a.num_views} (per-view FLAME estimates and cameras, " \
                                            f"image size {a.image_size})"
    return [f"avatar {path}:",
            f"  format: {meta.get('format', '?')} version {meta.get('format_version', '?')} (written by "
            f"{meta.get('library', '?')} {meta.get('library_version', '?')})",
            f"  Gaussians: {a.num_gaussians} ({a.anchor_idx.shape[1]} anchors each, {a.means.dtype})",
            f"  FLAME fingerprint: {which}",
            f"  n_shape: {a.betas_shape.shape[0]}, n_expr: {n_expr}",
            f"  views: {views}",
            f"  residuals (personalized): {'yes' if a.residuals is not None else 'no'}"]


def default_model_line() -> str:
    """One line on the shipped default model: present or not, preset, training, held-out PSNR."""
    import json
    from ..nn.pretrained import default_weights_path, has_default_weights
    if not has_default_weights():
        return f"default model: not installed ({default_weights_path()} missing)"
    try:
        from safetensors import safe_open
        with safe_open(default_weights_path(), framework="pt") as f:
            meta = f.metadata() or {}
        preset = json.loads(meta.get("preset", "{}")).get("name", "?")
        ev = json.loads(meta.get("last_eval", "{}") or "{}")
        psnr = f", held-out PSNR {ev['eval/psnr']:.1f} dB" if "eval/psnr" in ev else ""
        return (f"default model: preset {preset}, trained {meta.get('train_step', '?')} steps on "
                f"{meta.get('trained_on', '?')}{psnr}")
    except Exception as exc:  # noqa: BLE001 -- a damaged file: report, do not crash
        return f"default model: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"


def run(args) -> int:
    """Run ``ffavatar info`` (never fails on a broken install: it reports it; a bad avatar file is a
    one-line failure, checked before anything is printed)."""
    import numpy
    import torch

    avatar = avatar_lines(args.avatar) if args.avatar is not None else []
    from .._version import __version__
    print(f"ffavatar {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}")
    cuda = torch.cuda.is_available()
    dev = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"CUDA available: {cuda} (torch CUDA {torch.version.cuda}); device: {dev}")
    try:
        import ffavatar_kernels
        info = ffavatar_kernels.build_info()
        loaded = info.get("loaded", False)
        print(f"ffavatar_kernels {getattr(ffavatar_kernels, '__version__', '?')}: compiled extension "
              f"{'loaded' if loaded else 'not available (' + str(info.get('error')) + ')'}")
        if loaded:
            print(f"built against torch {info.get('torch_version')}, CUDA {info.get('cuda_version') or '-'} "
                  f"(architectures {info.get('cuda_architectures') or '-'})")
        print(f"CUDA kernels compiled in: {ffavatar_kernels.has_cuda_kernels()}")
    except Exception as exc:  # a broken or partial install: report, do not crash
        print(f"ffavatar_kernels: import failed ({type(exc).__name__}: {exc})")
    ops = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ffavatar::"))
    print(f"torch.ops.ffavatar ({len(ops)}): {', '.join(ops) if ops else '(none registered)'}")
    print(default_model_line())
    for line in avatar:
        print(line)
    return 0
