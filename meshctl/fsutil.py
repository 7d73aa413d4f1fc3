"""Small filesystem helpers: atomic writes and private directories."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from meshctl.errors import MeshctlError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(MeshctlError):
    """A state file could not be written for lack of space; the old one is untouched."""


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) if needed and tighten its mode."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` so that readers see the old or the new file, never a mix.

    On failure the old file is untouched and the temporary removed; a full disk (or quota)
    is a DiskFullError, one line naming the file, not a traceback.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_and_replace(tmp, path, data, mode)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(f"cannot write {path}: no space left on device",
                                f"free space in {path.parent}; the previous {path.name} is kept") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_and_replace(tmp: Path, path: Path, data: bytes, mode: int) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
