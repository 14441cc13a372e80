"""How every command fails: one line on stderr naming the command, a non-zero exit, no traceback.

Commands raise :class:`CliError` for bad arguments and check output paths with
:func:`check_output_path` before any work starts.
"""
from __future__ import annotations

import os

__all__ = ["CliError", "check_output_path"]


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
