"""The pure NAT modules import no I/O: sockets, subprocesses, asyncio, time, or the filesystem."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meshctl.nat

PURE = ["addr.py", "stun.py", "disco.py", "packet.py", "paths.py"]
BANNED = {"socket": "network I/O", "asyncio": "event loop", "subprocess": "processes",
          "time": "the clock is injected", "os": "randomness/filesystem are injected",
          "select": "I/O", "pyroute2": "netlink", "random": "randomness is injected"}


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports(name: str) -> None:
    tree = ast.parse((Path(meshctl.nat.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for mod in mods:
            top = mod.split(".")[0]
            assert top not in BANNED, f"{name} imports {mod}: {BANNED.get(top)}"
            assert mod not in ("meshctl.nat.rawsock", "meshctl.nat.netcheck"), f"{name} imports a shell"
