"""``ffavatar info``: versions, build information, kernel availability, the registered ops."""
from __future__ import annotations

import argparse
import platform

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("info", help="print versions, build information, kernel availability and the ops",
                              description="Print library, torch and device versions, how the compiled extension "
                                          "was built (torch, CUDA, architectures), whether its CUDA kernels are "
                                          "present, and the torch.ops.ffavatar op list.")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    """Run ``ffavatar info`` (never fails on a broken install: it reports it)."""
    import numpy
    import torch

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
    return 0
