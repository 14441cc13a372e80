"""The ``ffavatar`` command: the parser and the entry point; one module per command beside it."""
from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import animate, bench, demo, export, info, personalize, reconstruct, train

__all__ = ["main", "build_parser"]

COMMANDS = (reconstruct, animate, personalize, export, train, demo, bench, info)   # each: add_parser(subparsers), run(args) -> int


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's failure contract: a usage error is one line on stderr
    (``ffavatar <command>: <what>``), exit status 2. Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``ffavatar`` command and its subcommands."""
    p = _Parser(
        prog="ffavatar",
        description="Feed-forward 3D Gaussian head avatars: GPU kernels and the model layer.",
        epilog="Run `ffavatar <command> --help` for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ffavatar {__version__}")
    names = ",".join(c.__name__.rsplit(".", 1)[1] for c in COMMANDS)
    sub = p.add_subparsers(dest="command", metavar="{" + names + "}")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: "list[str] | None" = None) -> int:
    """Entry point of the ``ffavatar`` console script; returns the exit status.

    Failures print one line (``ffavatar <command>: ...``) and exit non-zero: argument errors raise
    ``CliError`` (a SystemExit) before any work; anything else a command raises is reported the
    same way (type and message, no traceback) with exit status 1; Ctrl-C exits 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"ffavatar {args.command}: interrupted", file=sys.stderr)
        return 130
    except (SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 -- the CLI's promise: one line, no traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"ffavatar {args.command}: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1
