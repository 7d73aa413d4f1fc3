"""Helpers for the packaging tests: find the binary under test, run it, prepare a node state.

The binary is `$MESHCTL_BIN` when set, else `dist/meshctl` when it is newer than the sources,
else built on request (`MESHCTL_BUILD_BINARY=1`), else the binary tests skip saying so.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGING: Final = ROOT / "packaging"
DIST_BINARY: Final = ROOT / "dist" / "meshctl"
RUN_TIMEOUT_S: Final = 120.0
BUILD_TIMEOUT_S: Final = 1200.0
GIT_IDENTITY: Final = {
    "GIT_AUTHOR_NAME": "admin", "GIT_AUTHOR_EMAIL": "admin@example.com",
    "GIT_COMMITTER_NAME": "admin", "GIT_COMMITTER_EMAIL": "admin@example.com",
}


def _newest_source_mtime() -> float:
    paths = [*ROOT.joinpath("meshctl").rglob("*.py"), *PACKAGING.glob("meshctl.spec"),
             *PACKAGING.glob("entry.py"), *ROOT.joinpath("coord-repo-template").rglob("*")]
    return max(p.stat().st_mtime for p in paths if p.is_file())


def binary_argv() -> tuple[list[str] | None, str]:
    """(argv of the binary under test, "") or (None, why the binary tests skip)."""
    custom = os.environ.get("MESHCTL_BIN")
    if custom:
        return shlex.split(custom), ""
    if DIST_BINARY.exists():
        if DIST_BINARY.stat().st_mtime >= _newest_source_mtime():
            return [str(DIST_BINARY)], ""
        if os.environ.get("MESHCTL_BUILD_BINARY") != "1":
            return None, ("dist/meshctl is older than the sources: run `make binary` "
                          "(or set MESHCTL_BIN, or MESHCTL_BUILD_BINARY=1 to build it here)")
    if os.environ.get("MESHCTL_BUILD_BINARY") == "1":
        build_binary()
        return [str(DIST_BINARY)], ""
    return None, ("no binary under test: set MESHCTL_BIN, run `make binary`, "
                  "or set MESHCTL_BUILD_BINARY=1 to build it here")


def build_binary() -> None:
    """`make binary` without make: PyInstaller with packaging/meshctl.spec (a few minutes)."""
    pyinstaller = Path(sys.executable).with_name("pyinstaller")
    subprocess.run([str(pyinstaller), "--noconfirm", "--clean", "--log-level", "WARN",
                    str(PACKAGING / "meshctl.spec")], cwd=ROOT, check=True, timeout=BUILD_TIMEOUT_S)


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        check: bool = False, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def prepare_node(meshctl: Sequence[str], work: Path, name: str = "dev1") -> tuple[Path, Path]:
    """A mesh with one approved member whose state dir holds an accepted state.

    Done as a person does it (init, push, join, approve on the branch, merge, push), with a
    bare repository as the git host and `sync --dry-run` to fetch and verify without touching
    the network configuration. Returns (checkout, state_dir).
    """
    env = {**GIT_IDENTITY, "MESHCTL_ADMIN_KEY": str(work / "admin.key")}
    checkout, bare, state = work / "coord", work / "coord.git", work / "state"
    run([*meshctl, "init", str(checkout), "--name", "acme"], env=env, check=True)
    run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    run(["git", "push", "-q", str(bare), "main"], cwd=checkout, env=env, check=True)
    root = run([*meshctl, "admin", "invite", "--repo", str(checkout)], env=env,
               check=True).stdout.split()[-1]
    node_env = {"MESHCTL_STATE_DIR": str(state), "MESHCTL_INTERFACE": "pkgtest0"}
    run([*meshctl, "join", str(bare), "--name", name, "--root", root], env=node_env, check=True)
    for git_args in (["fetch", "-q", str(bare), f"join/{name}"],
                     ["checkout", "-q", "-B", f"join/{name}", "FETCH_HEAD"]):
        run(["git", *git_args], cwd=checkout, env=env, check=True)
    run([*meshctl, "admin", "approve", name, "--repo", str(checkout)], env=env, check=True)
    for git_args in (["checkout", "-q", "main"], ["merge", "-q", "--ff-only", f"join/{name}"],
                     ["push", "-q", str(bare), "main"]):
        run(["git", *git_args], cwd=checkout, env=env, check=True)
    run([*meshctl, "sync", "--dry-run"], env=node_env, check=True)
    return checkout, state


GLIBC_RE: Final = re.compile(rb"GLIBC_(\d+)\.(\d+)")


def glibc_needed(binary: Path) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version the binary or anything packed in it needs."""
    from PyInstaller.archive.readers import CArchiveReader

    newest = (0, 0)
    reader = CArchiveReader(str(binary))
    with tempfile.TemporaryDirectory() as tmp:
        files = [binary]
        for name, entry in reader.toc.items():
            if entry[4] == "b" or ".so" in name:  # binaries and extension modules
                path = Path(tmp) / f"{len(files)}.so"
                path.write_bytes(reader.extract(name))
                files.append(path)
        for path in files:
            out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, timeout=60).stdout
            for match in GLIBC_RE.finditer(out):
                newest = max(newest, (int(match[1]), int(match[2])))
    return newest


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
