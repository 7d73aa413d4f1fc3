"""This node's own choices about routes (prefs.json in the state directory).

`meshctl up`, `meshctl set` and `meshctl sync` take the same flags, Tailscale's words:
`--accept-routes`, `--exit-node NAME` (`""` turns it off), `--exit-node-allow-lan-access` and, on a
router, `--snat-subnet-routes`. A flag given changes that choice and is kept (across agent
restarts, and for the next cron `sync`); a flag not given leaves it as it was. Every pass reads the
file, so a running agent follows `meshctl set` at its next pass (which `set` asks for at once).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meshctl.errors import MeshctlError, UsageError
from meshctl.fsutil import atomic_write

if TYPE_CHECKING:  # a no-op pass reads prefs.json: nothing heavier than json here
    from meshctl.router.policy_routing import RoutePrefs

PREFS_FILE: Final = "prefs.json"
MAX_PREFS_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Prefs:
    accept_routes: bool = False
    exit_node: str = ""  # a member's name or mesh address; "" = none
    exit_node_allow_lan_access: bool = False
    snat_subnet_routes: bool = True

    def route_prefs(self) -> RoutePrefs:
        from meshctl.router.policy_routing import RoutePrefs

        return RoutePrefs(self.accept_routes, self.exit_node, self.exit_node_allow_lan_access)

    def digest_text(self) -> str:
        """For the no-op pass's inputs digest: a change of any choice means a full pass."""
        return json.dumps(asdict(self), sort_keys=True)


DEFAULT_PREFS: Final = Prefs()
_KINDS: Final = {f.name: (str if f.name == "exit_node" else bool) for f in fields(Prefs)}


def check_exit_node(value: str, flag: str = "--exit-node") -> str:
    """A member's name or mesh address, or "" (none)."""
    if value == "":
        return value
    from meshctl.coord.records import NAME_RE  # here: only a node with an exit node pays for the import

    if NAME_RE.match(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise UsageError(f"{flag} {value[:80]!r}: expected a member's name or mesh address, or \"\" for none") from None


def load_prefs(state_dir: Path) -> Prefs:
    """The saved choices; the defaults when none were saved. A damaged file is an error naming
    it (the node would otherwise quietly drop an exit node it was told to use)."""
    path = state_dir / PREFS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return DEFAULT_PREFS
    if len(data) > MAX_PREFS_BYTES:
        raise MeshctlError(f"{path}: more than {MAX_PREFS_BYTES} bytes", "remove it and run `meshctl set` again")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise MeshctlError(f"{path}: not JSON ({exc})", "remove it and run `meshctl set` again") from None
    if not isinstance(doc, dict):
        raise MeshctlError(f"{path}: must be a JSON object", "remove it and run `meshctl set` again")
    values: dict[str, Any] = {}
    for key, value in doc.items():
        kind = _KINDS.get(key)
        if kind is None:
            raise MeshctlError(f"{path}: unknown field {key[:40]!r}", "remove it and run `meshctl set` again")
        if type(value) is not kind:
            raise MeshctlError(f"{path}: field {key} must be {'a string' if kind is str else 'true or false'}")
        values[key] = value
    try:
        values["exit_node"] = check_exit_node(values.get("exit_node", ""), f"{path}: field exit_node")
    except UsageError as exc:
        raise MeshctlError(exc.message) from None
    return Prefs(**values)


def save_prefs(state_dir: Path, prefs: Prefs) -> None:
    atomic_write(state_dir / PREFS_FILE, (json.dumps(asdict(prefs), indent=2) + "\n").encode())


def update_prefs(state_dir: Path, **changes: object) -> tuple[Prefs, Prefs]:
    """Apply the flags given (None = not given) and save; (before, after)."""
    before = load_prefs(state_dir)
    given = {k: v for k, v in changes.items() if v is not None}
    after = replace(before, **given)  # type: ignore[arg-type]
    if after != before:
        save_prefs(state_dir, after)
    return before, after
