"""One pass: coordination, inputs, desired state, plan, apply. Shared by `sync` and the agent.

    coordination (fetch + verify, or the accepted state) -> load_inputs -> desired (pure)
        -> Reconciler: read every subsystem -> plan (pure) -> apply

There is one pass and no shortcut around it: a pass that changes nothing reads every
subsystem and plans nothing, which is how drift is healed by the very next pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshctl.agent.desired import Desired, desired
from meshctl.agent.inputs import Addresses, Inputs, load_inputs
from meshctl.agent.plan import Plan
from meshctl.agent.reconcile import Reconciler
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.coord.trust import TrustMemory
from meshctl.coord.update import fetch_and_verify
from meshctl.errors import GitError, MeshctlError, VerificationError
from meshctl.fsutil import atomic_write
from meshctl.settings import Settings

if TYPE_CHECKING:
    from meshctl.coord.netmap import NetMap
    from meshctl.dns.resolvconf import Endpoint

log = logging.getLogger(__name__)

LAST_SYNC_FILE = "last-sync.json"


@dataclass(frozen=True, slots=True)
class PassResult:
    netmap: NetMap  # the map in force
    plan: Plan
    accepted_new_state: bool
    coordination_error: MeshctlError | None  # fetch/verify failed: the last good map was used
    apply_errors: tuple[MeshctlError, ...] = ()
    dns_upstreams: tuple[Endpoint, ...] | None = None

    @property
    def serial(self) -> int:
        return self.netmap.serial


@dataclass(frozen=True, slots=True)
class Coordination:
    memory: TrustMemory  # the accepted state in force
    netmap: NetMap | None  # built in this pass, if it was
    accepted: bool
    error: MeshctlError | None


def update_coordination(settings: Settings, cfg: NodeConfig, now: int, fetch: bool = True) -> Coordination:
    """The newest acceptable state: freshly verified, else the last accepted one (with the reason)."""
    node = NodeState(settings.state_dir)
    if fetch:
        try:
            result = fetch_and_verify(settings.state_dir, settings.repo_dir, now, cfg=cfg)
            return Coordination(result.memory, result.netmap, result.changed, None)
        except (GitError, VerificationError) as exc:
            memory = node.load_memory()
            if memory is None or not node.has_netmap():
                raise
            log.info("coordination: %s; keeping serial %d", exc.message, memory.serial)
            return Coordination(memory, None, False, exc)
    memory = node.load_memory()
    if memory is None or not node.has_netmap():
        raise MeshctlError("no accepted coordination state yet", "run `meshctl sync` first")
    return Coordination(memory, None, False, None)


def netmap_in_force(settings: Settings, cfg: NodeConfig, coord: Coordination, now: int,
                    known: NetMap | None = None) -> NetMap:
    """The map of the accepted state: just verified, the caller's (`known`, the agent's last),
    or netmap.json, re-verified from the repository if that is damaged or out of step with
    trust.json (a crash between the two writes)."""
    if coord.netmap is not None:
        return coord.netmap
    memory = coord.memory
    if known is not None and known.state_sha256 == memory.state_sha256:
        return known
    cached = NodeState(settings.state_dir).load_netmap()
    if cached is not None and cached.state_sha256 == memory.state_sha256:
        return cached.with_self(cfg.name)
    try:
        rebuilt = fetch_and_verify(settings.state_dir, settings.repo_dir, now, force=True, cfg=cfg).netmap
    except (GitError, VerificationError):
        if cached is None:
            raise
        return cached.with_self(cfg.name)
    assert rebuilt is not None
    return rebuilt


def peek_netmap(settings: Settings, now: int) -> NetMap:
    """The newest map in force (fetched and verified), without touching the host: what the
    agent shows its path engine and DNS before its first pass."""
    cfg = NodeState(settings.state_dir).load_config()
    return netmap_in_force(settings, cfg, update_coordination(settings, cfg, now), now)


class DesiredMemo:
    """desired() is pure: the agent keeps the last result and reuses it while the inputs are equal
    (a pass that changes nothing then only reads and plans)."""

    def __init__(self) -> None:
        self._last: tuple[Inputs, Desired] | None = None

    def __call__(self, inputs: Inputs) -> Desired:
        if self._last is not None and self._last[0] == inputs:
            return self._last[1]
        wanted = desired(inputs)
        self._last = (inputs, wanted)
        return wanted


def run_pass(settings: Settings, now: int, *, dry_run: bool = False, fetch: bool = True,
             reconciler: Reconciler | None = None, endpoints: Mapping[str, str | None] | None = None,
             extra_addresses: Addresses = (), serve_dns: bool = False,
             before_apply: Callable[[], None] | None = None, known_netmap: NetMap | None = None,
             desired_of: Callable[[Inputs], Desired] = desired) -> PassResult:
    """`endpoints` None: a pass without an agent (static endpoints of the records);
    `before_apply` runs before the host is touched (the CLI's preflight); `known_netmap`: the
    agent's map from its previous pass, reused while still in force."""
    cfg = NodeState(settings.state_dir).load_config()
    coord = update_coordination(settings, cfg, now, fetch)
    netmap = netmap_in_force(settings, cfg, coord, now, known_netmap)
    inputs = load_inputs(settings.keys_dir, cfg, netmap, settings.listen_port, endpoints=endpoints,
                         extra_addresses=extra_addresses, serve_dns=serve_dns,
                         was_member=was_member(settings.state_dir, known_netmap))
    wanted = desired_of(inputs)
    reconciler = reconciler or Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
    if dry_run:
        return PassResult(netmap, reconciler.dry_run(wanted, now), coord.accepted, coord.error)
    if before_apply is not None:
        before_apply()
    result = reconciler.apply(wanted, now)
    record_pass(settings.state_dir, now, netmap.serial, coord.error, result.errors, fetch)
    return PassResult(netmap, result.plan, coord.accepted, coord.error, tuple(result.errors),
                      result.dns_upstreams)


def was_member(state_dir: Path, known: NetMap | None) -> bool:
    """Whether this node was in the mesh before: in the agent's last map, or at the last pass
    that applied (last-sync.json), so a revocation is told as such."""
    if known is not None and known.self_peer is not None:
        return True
    try:
        return json.loads((state_dir / LAST_SYNC_FILE).read_text()).get("member") is True
    except (OSError, ValueError, AttributeError):
        return False


def record_pass(state_dir: Path, now: int, serial: int, coord_error: MeshctlError | None,
                apply_errors: list[MeshctlError], fetched: bool = True) -> None:
    """last-sync.json: what `status` reports about freshness and failures.

    A pass that did not fetch (the agent re-applying its map) knows nothing new about the git
    host: it keeps the last fetch's verdict, so an unreachable host stays reported until a
    fetch succeeds. A pass that applied was a member's: a later map without this node is a
    removal, not a request still waiting."""
    path = state_dir / LAST_SYNC_FILE
    previous: dict[str, object] = {}
    try:
        previous = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        pass
    if fetched or not previous:
        coordination = {
            "coordination_ok": coord_error is None,
            "coordination_error": coord_error.message if coord_error else None,
            "last_fetch_ok_at": now if coord_error is None else previous.get("last_fetch_ok_at"),
        }
    else:
        coordination = {k: previous.get(k) for k in ("coordination_ok", "coordination_error", "last_fetch_ok_at")}
    doc = {
        "at": now,
        "serial": serial,
        **coordination,
        "apply_errors": [e.message for e in apply_errors],
        "member": True,
    }
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
