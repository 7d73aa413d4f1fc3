#!/usr/bin/env python3
"""Issue 8 benchmark: how fast `meshctl version` and `meshctl status` start.

Median wall time of the one-file binary (`$MESHCTL_BIN` or dist/meshctl) against, in the same
run, `python -c 'import typer'` (the issue's baseline), `python -c pass` (the interpreter alone)
and `python -m meshctl`. `status` reads a prepared state directory (a one-member mesh made with
the CLI, accepted with `sync --dry-run`). Runs are interleaved so background load hits every
row alike.

Then where the time goes: with strace, the bootloader unpacking the bundled libraries into
/tmp/_MEIxxxxxx, the Python child, and the cleanup; with `python -X importtime`, what
`meshctl version` imports (typer, meshctl, the rest), and whether pydantic is among it (typer
0.29 imports it on every command: pyproject.toml pins typer below it); and the largest
libraries unpacked on every run.
Goal (issue 8): `dist/meshctl version` at most 0.5 s.

    python bench/startup.py [--runs 9] [--baseline COMMAND ...]

--baseline times another meshctl in the same run (a command line: a build of an earlier commit,
`env PYTHONPATH=OLD_TREE OTHER_VENV/bin/python -m meshctl`), since on a shared machine only
figures from one run compare.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
GOAL_VERSION_S: Final = 0.5
GIT_ENV: Final = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
                  "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}


def binary() -> list[str] | None:
    custom = os.environ.get("MESHCTL_BIN")
    if custom:
        return shlex.split(custom)
    dist = ROOT / "dist" / "meshctl"
    return [str(dist)] if dist.exists() else None


def sh(argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def prepare_state(meshctl: list[str], work: Path) -> Path:
    """init, join (bare repo as the git host), approve, merge, sync --dry-run."""
    env = {**GIT_ENV, "MESHCTL_ADMIN_KEY": str(work / "admin.key")}
    co, bare, state = work / "coord", work / "coord.git", work / "state"
    sh([*meshctl, "init", str(co), "--name", "bench"], env)
    sh(["git", "init", "-q", "--bare", "-b", "main", str(bare)])
    sh(["git", "push", "-q", str(bare), "main"], env, co)
    root = sh([*meshctl, "admin", "invite", "--repo", str(co)], env).split()[-1]
    node = {"MESHCTL_STATE_DIR": str(state), "MESHCTL_INTERFACE": "benchstart0"}
    sh([*meshctl, "join", str(bare), "--name", "dev1", "--root", root], node)
    sh(["git", "fetch", "-q", str(bare), "join/dev1"], env, co)
    sh(["git", "checkout", "-q", "-B", "join/dev1", "FETCH_HEAD"], env, co)
    sh([*meshctl, "admin", "approve", "dev1", "--repo", str(co)], env)
    sh(["git", "checkout", "-q", "main"], env, co)
    sh(["git", "merge", "-q", "--ff-only", "join/dev1"], env, co)
    sh(["git", "push", "-q", str(bare), "main"], env, co)
    sh([*meshctl, "sync", "--dry-run"], node)
    return state


def wall(argv: Sequence[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def strace_split(argv: Sequence[str], env: dict[str, str], tmp: Path) -> tuple[float, float, float] | None:
    """(unpack, python child, cleanup) seconds of one binary run, from execve/exit timestamps."""
    if shutil.which("strace") is None:
        return None
    trace = tmp / "strace.txt"
    subprocess.run(["strace", "--seccomp-bpf", "-f", "-ttt", "-e", "trace=execve,exit_group", "-o", str(trace), *argv],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    execs, exits = [], []
    for line in trace.read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2].startswith("execve(") and "= 0" in line:
            execs.append(float(fields[1]))
        elif len(fields) > 2 and fields[2].startswith("exit_group("):
            exits.append(float(fields[1]))
    if len(execs) < 2 or len(exits) < 2:
        return None  # not a one-file binary (no child)
    return execs[1] - execs[0], exits[0] - execs[1], exits[1] - exits[0]


def unpacked(path: str) -> list[tuple[int, str]] | None:
    """(size, name) of what the bootloader writes to /tmp on every run, largest first."""
    try:
        from PyInstaller.archive.readers import CArchiveReader  # type: ignore[import-untyped]
    except ImportError:
        return None
    toc = CArchiveReader(path).toc
    return sorted(((entry[2], name) for name, entry in toc.items() if name != "PYZ.pyz" and entry[4] in ("b", "x")),
                  reverse=True)


def import_split(py: str, argv: Sequence[str], env: dict[str, str]) -> tuple[dict[str, float], bool]:
    """Seconds `python -m meshctl ARGV` spends importing, by whose modules (self time of each
    module, so a package's figure leaves out what it imports from others); pydantic among them?"""
    proc = subprocess.run([py, "-X", "importtime", "-m", "meshctl", *argv], capture_output=True, text=True,
                          env=env, check=True)
    groups: dict[str, float] = {"typer": 0.0, "meshctl": 0.0, "other libraries": 0.0, "stdlib": 0.0}
    pydantic = False
    for line in proc.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        top = fields[2].strip().split(".")[0]
        pydantic = pydantic or top == "pydantic"
        group = top if top in ("typer", "meshctl") else "stdlib" if top in sys.stdlib_module_names else \
            "other libraries"
        groups[group] += int(fields[0]) / 1e6
    return groups, pydantic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--baseline", action="append", default=[], metavar="COMMAND",
                        help="another meshctl command line to time in the same run (repeatable)")
    args = parser.parse_args()
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    binary_argv = binary()
    with tempfile.TemporaryDirectory(prefix="meshctl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        state = prepare_state([py, "-m", "meshctl"], tmp / "py")
        status_env = {**env, "MESHCTL_STATE_DIR": str(state), "MESHCTL_INTERFACE": "benchstart0"}
        rows: list[tuple[str, list[str], dict[str, str]]] = [
            ("python -c 'import typer'", [py, "-c", "import typer"], env),
            ("python -c pass", [py, "-c", "pass"], env),
            ("python -m meshctl version", [py, "-m", "meshctl", "version"], env),
            ("python -m meshctl status", [py, "-m", "meshctl", "status"], status_env),
        ]
        if binary_argv:
            rows += [("dist/meshctl version", [*binary_argv, "version"], env),
                     ("dist/meshctl status", [*binary_argv, "status"], status_env)]
        for i, command in enumerate(args.baseline, 1):
            argv = shlex.split(command)
            rows += [(f"baseline {i} version", [*argv, "version"], env),
                     (f"baseline {i} status", [*argv, "status"], status_env)]
        times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for _name, argv, row_env in rows:  # warm the page cache
            wall(argv, row_env)
        for _ in range(args.runs):
            for name, argv, row_env in rows:
                times[name].append(wall(argv, row_env))
        base = statistics.median(times[rows[0][0]])
        typer_version = sh([py, "-c", "import importlib.metadata as m; print(m.version('typer'))"]).strip()
        print(f"startup, median of {args.runs} runs ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
              f"typer {typer_version})")
        print(f"{'command':<48} {'median s':>9} {'min s':>7} {'x import typer':>15}")
        for name, _, _ in rows:
            med = statistics.median(times[name])
            print(f"{name:<48} {med:>9.3f} {min(times[name]):>7.3f} {med / base:>15.2f}")
        for i, command in enumerate(args.baseline, 1):
            print(f"baseline {i}: {command}")
        for argv, row_env in ((["version"], env), (["status"], status_env)):
            by_import = [import_split(py, argv, row_env) for _ in range(5)]
            pydantic = "YES" if any(p for _, p in by_import) else "no"
            print(f"python -X importtime -m meshctl {argv[0]}: self time by owner (median of 5; "
                  f"pydantic imported: {pydantic})")
            print("  " + ", ".join(f"{group} {statistics.median(g[group] for g, _ in by_import):.3f} s"
                                   for group in by_import[0][0]))
        if not binary_argv:
            print("no binary: run `make binary` (or set MESHCTL_BIN) for the dist/meshctl rows")
            return 0
        med_version = statistics.median(times["dist/meshctl version"])
        verdict = "met" if med_version <= GOAL_VERSION_S else "NOT met"
        print(f"goal dist/meshctl version <= {GOAL_VERSION_S} s: {verdict}")
        splits = [s for s in (strace_split([*binary_argv, "version"], env, tmp) for _ in range(5)) if s]
        pieces = unpacked(binary_argv[0]) if len(binary_argv) == 1 else None
        if splits:
            unpack, child, cleanup = (statistics.median(col) for col in zip(*splits, strict=True))
            what = f" ({sum(size for size, _ in pieces) / 1e6:.0f} MB of libraries)" if pieces else ""
            print(f"dist/meshctl version under strace (median of {len(splits)}; strace slows each part):")
            print(f"  unpack to /tmp{what}: {unpack:.3f} s, python: {child:.3f} s, cleanup: {cleanup:.3f} s")
        if pieces:
            largest = ", ".join(f"{name.split('/')[-1]} {size / 1e6:.1f}" for size, name in pieces[:6])
            print(f"  largest unpacked (MB): {largest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
