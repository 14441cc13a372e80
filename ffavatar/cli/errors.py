"""How every command fails: one line on stderr naming the command, a non-zero exit, no traceback.

Commands raise :class:`CliError` for bad arguments and check output paths with
:func:`check_output_path` (input files with :func:`check_input_file`) before any work starts;
outputs that are not written atomically by the library go through :func:`atomic_output`.
"""
from __future__ import annotations

import os

__all__ = ["CliError", "check_output_path", "check_input_file", "check_device", "check_positive", "atomic_output"]


class CliError(SystemExit):
    """A user-facing failure of ``ffavatar <command>``: the message is printed, the exit status is 1.

    It is a ``SystemExit`` (code = the message), so a caller of ``main()`` sees it as argparse's own
    usage errors, and a Python caller can catch it.
    """

    def __init__(self, command: str, message: str):
        super().__init__(f"ffavatar {command}: {message}")


def check_output_path(command: str, option: str, path: str, extensions: tuple[str, ...]) -> str:
    """Check that ``path`` can be written, before the work: extension, existing folder, writable.

    The file is opened for appending and, if it did not exist before, removed again: this catches
    folders that are not writable (also for root, whom ``os.access`` lets pass everywhere) and
    pseudo file systems such as /proc.

    Returns:
        the absolute path.

    Raises:
        CliError: naming ``option`` and what is wrong.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        raise CliError(command, f"{option} must end in {' or '.join(extensions)}, got {path!r}")
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise CliError(command, f"{option}: the folder {parent!r} does not exist")
    if os.path.isdir(full):
        raise CliError(command, f"{option}: {path!r} is a folder")
    existed = os.path.exists(full)
    try:
        with open(full, "ab"):
            pass
    except OSError as exc:
        raise CliError(command, f"{option}: cannot write {path!r} ({exc.strerror or exc})") from None
    if not existed:
        os.remove(full)
    return full


def check_input_file(command: str, option: str, path: str, what: str = "file") -> str:
    """Check that ``path`` is an existing, readable file, before the work.

    Returns:
        the absolute path.

    Raises:
        CliError: naming ``option`` (or the positional argument) and the file.
    """
    full = os.path.abspath(path)
    if not os.path.exists(full):
        raise CliError(command, f"{option}: no such {what} {path!r}")
    if os.path.isdir(full):
        raise CliError(command, f"{option}: {path!r} is a folder, not a {what}")
    try:
        with open(full, "rb"):
            pass
    except OSError as exc:
        raise CliError(command, f"{option}: cannot read {path!r} ({exc.strerror or exc})") from None
    return full


def check_device(command: str, device: "str | None") -> str:
    """``--device``: ``cpu`` or ``cuda`` (None: cuda when available); CliError when CUDA is missing."""
    import torch
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise CliError(command, "--device cuda, but torch has no CUDA device here")
    return device


def check_positive(command: str, option: str, value, *, minimum=1, maximum=None) -> None:
    """An integer option within [minimum, maximum] (None: no upper bound), else CliError."""
    if value is None:
        return
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise CliError(command, f"{option} must be {bound}, got {value}")


def atomic_output(path: str):
    """Write an output file through a temporary file beside it (:func:`ffavatar.flame.atomic.atomic_path`):
    a failed command never leaves a partial or truncated output file."""
    from ..flame.atomic import atomic_path
    return atomic_path(path)
