"""Pure modules stay pure: no sockets, subprocesses, git, netlink or event loop (STYLE.md).

The imports are read statically (including those inside functions), so a lazy import
cannot slip a side effect into a module whose tests assume none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "meshctl"

PURE_MODULES = [
    "coord/records.py", "coord/signing.py", "coord/strictjson.py", "coord/verify.py", "coord/netmap.py",
    "coord/netmap_json.py", "coord/pr_check.py", "coord/trust.py", "coord/baseline.py", "coord/state_diff.py",
    "coord/signed_change.py", "coord/changes.py", "coord/endpoint_record.py",
    "coord/endpoint_verify.py", "coord/endpoint_publish.py", "agent/record_poll.py",
    "coord/enrollment.py", "coord/delegation.py", "coord/effective.py", "coord/addressing.py", "duration.py",
    "policy/hujson.py", "policy/parse.py", "policy/compile.py", "policy/model.py", "policy/addrset.py",
    "policy/protocols.py", "policy/evaluate.py", "policy/approvers.py", "policy/check.py", "firewall/nft.py",
    "nat/stun.py", "nat/disco.py", "nat/packet.py", "nat/paths.py", "nat/addr.py", "nat/admission.py",
    "relay/wire.py", "relay/server_core.py", "relay/client_core.py", "relay/channels.py",
    "relay/metrics.py", "ratelimit.py",
    "dns/zone.py", "dns/resolver.py", "dns/resolvconf.py",
    "wg/config.py", "wg/uapi.py", "wg/chunks.py", "router/config.py",
    "coord/routes.py", "coord/route_approval.py", "router/policy_routing.py", "router/forwarding.py",
    "firewall/routed.py",
    "agent/desired.py", "agent/status.py", "agent/plan.py", "agent/paths/choose.py", "agent/paths/record.py",
    "firewall/plan.py", "dns/os_plan.py", "errors.py", "keys.py",
]

BANNED = {
    "asyncio": "the event loop belongs to the agent's shell (agent/daemon.py)",
    "socket": "sockets belong to shells (nat/rawsock.py, dns/server.py, relay/)",
    "subprocess": "running programs belongs to shells (firewall/apply.py, wg/userspace.py)",
    "pygit2": "git belongs to coord/repo.py alone",
    "pyroute2": "netlink belongs to wg/kernel.py and router/linux.py",
    "threading": "concurrency belongs to the shell",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module == "meshctl.netlink":  # pyroute2, imported lean
                names.add("pyroute2")
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io(module: str) -> None:
    path = PACKAGE / module
    assert path.exists(), f"{module} moved: update PURE_MODULES"
    bad = sorted(imported_modules(path) & set(BANNED))
    assert not bad, "; ".join(f"{module} imports {name}: {BANNED[name]}" for name in bad)


def test_cli_modules_import_heavy_libraries_lazily() -> None:
    """`meshctl version` must start fast: CLI modules import heavy libraries inside functions."""
    heavy = {"pygit2", "pyroute2", "dnslib", "cryptography"}
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module.split(".")[0])
        assert not top & heavy, f"{path.name} imports {sorted(top & heavy)} at module level"


def test_version_loads_no_heavy_library() -> None:
    """What `meshctl version` really imports, including everything command modules pull in."""
    import subprocess
    import sys

    code = ("import sys; from meshctl.cli.app import build_app; build_app();"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'pygit2', 'pyroute2', 'dnslib', 'cryptography', 'asyncio'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "", f"registering the commands imported: {out}"


def _meshctl_imports(path: Path) -> set[str]:
    """The meshctl modules `path` imports (anywhere in it), as dotted names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("meshctl"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meshctl"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_only_the_entry_points_import_the_root_group() -> None:
    """No cycle in cli/: the root group (app.py) imports the command table, which imports the
    command modules; they import cli/common.py, never app.py."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name != "app.py":
            assert "meshctl.cli.app" not in _meshctl_imports(path), f"cli/{path.name} imports cli/app.py"


def test_every_command_module_is_imported_literally() -> None:
    """cli/commands.py names its modules in import statements (PyInstaller and readers see them)."""
    tree = ast.parse((PACKAGE / "cli" / "commands.py").read_text())
    assert "importlib" not in imported_modules(PACKAGE / "cli" / "commands.py")
    literal = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    commands = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - {
        "__init__", "app", "commands", "common", "admin_common", "admin_relay", "admin_authkey", "preflight", "render",
        "route_flags"}
    assert {f"meshctl.cli.{name}" for name in commands} <= literal


def test_no_import_error_is_swallowed_around_our_own_modules() -> None:
    """A broken import of ours must fail loudly, not silently turn a feature off."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Try):
                continue
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not caught & {"ImportError", "ModuleNotFoundError"}:
                continue
            inner = set().union(*(_meshctl_imports_of(stmt) for stmt in node.body))
            assert not inner, f"{path.relative_to(PACKAGE)}: `except ImportError` around {sorted(inner)}"


def _meshctl_imports_of(node: ast.AST) -> set[str]:
    out: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("meshctl"):
            out.add(sub.module)
        elif isinstance(sub, ast.Import):
            out.update(a.name for a in sub.names if a.name.startswith("meshctl"))
    return out


# --- direction: cli -> agent -> subsystems -> keys/errors -------------------------------------

LAYERS = {
    "cli": 3,  # the command line
    "agent": 2,  # the pass and the path engine
    # subsystems: each a package with one job
    "coord": 1, "policy": 1, "firewall": 1, "router": 1, "wg": 1, "dns": 1, "nat": 1, "relay": 1, "udp": 1,
    "netlink": 1, "netaddrs": 1,
    # the base every layer may use
    "settings": 0, "identity": 0, "fsutil": 0, "keys": 0, "errors": 0, "ratelimit": 0, "duration": 0, "__init__": 0,
    "__main__": 4,
}
# Subsystem -> subsystems it may not import (each entry a reason a review found).
FORBIDDEN = {
    "wg": {"relay": "WireGuard backends do not depend on the relay (UDP helpers live in udp/)"},
    "nat": {"relay": "NAT traversal codecs know no relay", "wg": "NAT traversal knows no WireGuard backend"},
    "udp": {"relay": "socket helpers serve the relay, not the reverse"},
    "keys": {},
}


def _layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 and parts[1] != "__version__" else "__init__"
    assert top in LAYERS, f"meshctl.{top} has no layer in this test: add it to LAYERS"
    return top, LAYERS[top]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    """cli -> agent -> subsystems -> keys/errors: never up, never sideways where a rule forbids."""
    me = ".".join(("meshctl", *path.relative_to(PACKAGE).with_suffix("").parts))
    own, level = _layer_of(me)
    for target in _meshctl_imports(path):
        if target == "meshctl" or target.count(".") == 0:
            continue
        other, other_level = _layer_of(target)
        if other == own:
            continue
        assert other_level < level or level == other_level <= 1, f"{me} imports {target}: up the layers"
        reason = FORBIDDEN.get(own, {}).get(other)
        assert reason is None, f"{me} imports {target}: {reason}"


def test_the_base_imports_only_the_base() -> None:
    """keys and errors are the bottom: errors imports nothing of ours, keys only errors."""
    assert _meshctl_imports(PACKAGE / "errors.py") == set()
    assert {m for m in _meshctl_imports(PACKAGE / "keys.py") if not m.startswith("meshctl.errors")} == set()
