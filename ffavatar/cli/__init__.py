"""The ``ffavatar`` command line (``main``), one module per command (``reconstruct``, ``animate``, ``export``,
``demo``, ``bench``, ``info``)."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
