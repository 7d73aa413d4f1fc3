"""Helpers for the fault-injection lab tests (issue 9, item 3): a mesh, a fault, the outcome.

- `need_lab`: skip, naming what is missing;
- `faked_clock`: the environment for a command whose wall clock is moved by libfaketime
  (Debian package faketime), without touching the machine's;
- `tmpfs`: a small tmpfs mounted on a state directory, unmounted even on failure;
- `agent_log_since` / `AgentLog`: the lines an agent logged after some moment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from lab import lab_unavailable

FAKETIME_LIBS: Final = (Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
                        Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"))


def need_lab(*extra_tools: str) -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool in ("wireguard-go", "wg", "git", "ping", *extra_tools):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` on PATH")


def faketime_library() -> Path | None:
    return next((p for p in FAKETIME_LIBS if p.exists()), None)


def faked_clock(offset: str) -> dict[str, str]:
    """The environment that runs one command with its wall clock moved by `offset`
    (libfaketime's relative form: "+31d", "-2d", "+3600"), through LD_PRELOAD.

    Only that process tree sees the fake clock, never the machine. Its monotonic clock moves
    by the same constant offset, which keeps it consistent inside the process: libfaketime's
    FAKETIME_DONT_FAKE_MONOTONIC breaks Python's time.sleep (EINVAL from clock_nanosleep with
    an absolute time), and an offset changed while an agent runs would make asyncio's
    monotonic timers jump, which no real clock does. So a clock "jump" here is a command run
    after it, not a change under a running process.
    """
    lib = faketime_library()
    if lib is None:
        pytest.skip("needs libfaketime (Debian: faketime)")
    return {"LD_PRELOAD": str(lib), "FAKETIME": offset}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount -o size=...) on `path` for the block; lazily unmounted after,
    so a process that still holds a file there cannot keep it mounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def fill_disk(directory: Path, name: str = "filler") -> Path:
    """Write zeros into `directory/name` until the file system is full; returns the file."""
    path = directory / name
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return path


class AgentLog:
    """An agent's log from the moment this object is made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        try:
            with self.path.open(errors="replace") as f:
                f.seek(self.offset)
                return f.read()
        except FileNotFoundError:
            return ""
