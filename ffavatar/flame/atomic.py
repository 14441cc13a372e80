"""Atomic file writes (motion files here, avatar files in :mod:`ffavatar.avatar.files`).

The bytes go to a temporary file in the destination's folder, which is flushed and fsync'ed, then
renamed over the destination with ``os.replace`` (atomic on POSIX and Windows), and the folder is
fsync'ed. A write interrupted at any point (an exception, a full disk, a killed process) leaves the
previous file, if any, intact; on an exception the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import os
import secrets

__all__ = ["atomic_write", "atomic_path"]

_CHUNK = 4 << 20


def _write_all(f, data) -> None:
    """Write ``data`` to the open file ``f`` in chunks (tests replace this to fail mid-write)."""
    mv = memoryview(data)
    for s in range(0, len(mv), _CHUNK):
        f.write(mv[s:s + _CHUNK])


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike"):
    """Write ``path`` through a temporary file beside it: yields the temporary path (same folder and
    extension, so writers that pick the format by extension work); on success it is renamed over
    ``path`` and the folder fsync'ed, on any failure (Ctrl-C included) removed."""
    full = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(full)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.{secrets.token_hex(6)}.partial{ext}")
    try:
        yield tmp
        os.replace(tmp, full)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def atomic_write(path: "str | os.PathLike", data: bytes, *, error: type = ValueError) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring).

    Raises:
        ``error`` (a ValueError subclass of the caller) naming the file when its folder does not
        exist or ``path`` is a folder; OSError from the file system otherwise.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise error(f"{path}: cannot write, the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise error(f"{path}: cannot write, it is a folder")
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
