"""The relay protocol core is pure: bytes, events and `now` in, bytes, events and deadlines out."""

from __future__ import annotations

import ast
from pathlib import Path

import meshctl.relay

BANNED = {"socket": "network I/O", "asyncio": "event loop", "subprocess": "processes",
          "time": "the clock is injected", "os": "randomness is injected", "random": "randomness is injected",
          "select": "I/O", "ssl": "transport", "pathlib": "filesystem", "logging": "the shell decides what to log"}


def test_protocol_module_imports_no_io() -> None:
    tree = ast.parse((Path(meshctl.relay.__file__).parent / "protocol.py").read_text())
    seen = []
    for node in ast.walk(tree):
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for mod in mods:
            seen.append(mod)
            top = mod.split(".")[0]
            assert top not in BANNED, f"protocol.py imports {mod}: {BANNED.get(top)}"
            assert not mod.startswith("meshctl.relay."), f"protocol.py imports the shell module {mod}"
    assert "meshctl.nat.stun" in seen or "meshctl.nat" in seen  # STUN answers are pure too


def test_cli_module_keeps_heavy_imports_inside_functions() -> None:
    tree = ast.parse((Path(meshctl.relay.__file__).parents[1] / "cli" / "relay.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name if isinstance(n, ast.Import) else (n.module or "") for n in top_level for a in n.names}
    assert not any(m.startswith(("meshctl.relay", "cryptography", "pygit2", "asyncio")) for m in names), names
