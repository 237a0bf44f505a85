"""Atomic file writes: every cache, data and model file appears whole or not at all."""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


class NotRegularFile(OSError):
    """A path that is a FIFO, a device or a folder where a file was expected."""


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file. Opened without blocking and checked before reading: a FIFO
    planted where a cache entry or a marker should be would otherwise hang the read forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write to a temporary name beside `path`, flush it to disk, then rename over `path`.

    The file gets the mode it had (a user's prompts file keeps its mode), or, when new, the mode
    any new file gets under the umask: mkstemp's private 0600 would make a web server running as
    another user answer 403 for the site's data files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path.parent)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:     # a full disk: say which file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
