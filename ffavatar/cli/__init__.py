"""The ``ffavatar`` command line (``main``), one module per command (``demo``, ``info``)."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
