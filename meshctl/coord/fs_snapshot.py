"""A Snapshot of a directory on disk (a checkout), for `meshctl repo verify` and admin commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from meshctl.errors import VerificationError

MAX_WALK_FILES: Final = 250_001  # one past verify.MAX_FILES so the verifier can name the excess
MAX_DEPTH: Final = 4


class FsSnapshot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, str | None] | None = None

    def files(self) -> dict[str, str | None]:
        if self._files is None:
            self._files = self._walk()
        return self._files

    def _walk(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        stack = [("", 0)]
        dirs = 0  # bounded too: a checkout of empty directories holds no file but costs a walk
        while stack:
            rel, depth = stack.pop()
            with os.scandir(self.root / rel if rel else self.root) as it:
                for entry in it:
                    path = f"{rel}/{entry.name}" if rel else entry.name
                    if not rel and entry.name == ".git":
                        continue
                    if entry.is_symlink():
                        raise VerificationError(f"{path}: symbolic links are not allowed")
                    if entry.is_dir():
                        if depth + 1 >= MAX_DEPTH:
                            raise VerificationError(f"{path}: directories nest too deeply")
                        dirs += 1
                        if dirs >= MAX_WALK_FILES:
                            raise VerificationError(f"repository has more than {MAX_WALK_FILES - 1} directories")
                        stack.append((path, depth + 1))
                    else:
                        out[path] = None
                        if len(out) >= MAX_WALK_FILES:
                            return out
        return out

    def size(self, path: str) -> int:
        return (self.root / path).stat().st_size

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()
