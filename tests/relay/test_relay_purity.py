"""The relay protocol core is pure: bytes, events and `now` in, bytes, events and deadlines out."""

from __future__ import annotations

import ast
from pathlib import Path

import meshctl.relay

BANNED = {"socket": "network I/O", "asyncio": "event loop", "subprocess": "processes",
          "time": "the clock is injected", "os": "randomness is injected", "random": "randomness is injected",
          "select": "I/O", "ssl": "transport", "pathlib": "filesystem", "logging": "the shell decides what to log"}


PURE_RELAY_MODULES = ("wire.py", "server_core.py", "client_core.py", "channels.py", "metrics.py")


def _imports(module: str) -> list[str]:
    tree = ast.parse((Path(meshctl.relay.__file__).parent / module).read_text())
    seen = []
    for node in ast.walk(tree):
        seen += ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    return seen


def test_protocol_modules_import_no_io() -> None:
    for module in PURE_RELAY_MODULES:
        seen = _imports(module)
        for mod in seen:
            top = mod.split(".")[0]
            assert top not in BANNED, f"{module} imports {mod}: {BANNED.get(top)}"
            shell = mod.startswith("meshctl.relay.") and mod.rsplit(".", 1)[1] + ".py" not in PURE_RELAY_MODULES
            assert not shell, f"{module} imports the shell module {mod}"
    assert "meshctl.nat" in _imports("server_core.py")  # STUN answers are pure too


def test_the_wire_format_knows_neither_side() -> None:
    """wire.py is what both sides share: it imports neither state machine."""
    assert not {m for m in _imports("wire.py") if m.endswith(("server_core", "client_core"))}
    assert not {m for m in _imports("client_core.py") if m.endswith("server_core")}
    assert not {m for m in _imports("server_core.py") if m.endswith("client_core")}


def test_cli_module_keeps_heavy_imports_inside_functions() -> None:
    tree = ast.parse((Path(meshctl.relay.__file__).parents[1] / "cli" / "relay.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name if isinstance(n, ast.Import) else (n.module or "") for n in top_level for a in n.names}
    assert not any(m.startswith(("meshctl.relay", "cryptography", "pygit2", "asyncio")) for m in names), names
