"""One pass: coordination, inputs, desired state, plan, apply. Shared by `sync` and the agent.

    coordination (fetch + verify main and the devices' branches, or the accepted state)
        -> publish this device's endpoint record when due -> the map in force (coord/effective.py)
        -> load_inputs -> desired (pure) -> Reconciler: read every subsystem -> plan (pure) -> apply

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
from meshctl.agent.gcpause import collector_paused
from meshctl.agent.inputs import Addresses, Inputs, NotAMember, load_inputs
from meshctl.agent.plan import Plan
from meshctl.agent.prefs import Prefs, load_prefs
from meshctl.agent.reconcile import Reconciler
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.coord.trust import TrustMemory
from meshctl.coord.update import fetch_and_verify
from meshctl.errors import GitError, MeshctlError, VerificationError
from meshctl.fsutil import atomic_write
from meshctl.settings import Settings

if TYPE_CHECKING:
    from meshctl.coord.endpoint_publish import Published, PublishRequest
    from meshctl.coord.endpoint_verify import EndpointView
    from meshctl.coord.netmap import NetMap, Prefix
    from meshctl.dns.resolvconf import Endpoint

# What this device would publish, given what the devices' branches say (None: nothing).
PublishPlan = Callable[["EndpointView | None"], "PublishRequest | None"]

log = logging.getLogger(__name__)

LAST_SYNC_FILE = "last-sync.json"
RouteChoices = Mapping["Prefix", str]  # HA prefixes -> the router the agent's monitor chose


@dataclass(frozen=True, slots=True)
class PassResult:
    netmap: NetMap  # the map in force
    plan: Plan
    accepted_new_state: bool
    coordination_error: MeshctlError | None  # fetch/verify failed: the last good map was used
    apply_errors: tuple[MeshctlError, ...] = ()
    dns_upstreams: tuple[Endpoint, ...] | None = None
    endpoints: EndpointView | None = None  # the devices' branches, when this pass fetched them
    published: Published | None = None  # this device's own record, when this pass looked at it

    @property
    def serial(self) -> int:
        return self.netmap.serial


@dataclass(frozen=True, slots=True)
class Coordination:
    memory: TrustMemory  # the accepted state in force
    netmap: NetMap | None  # built in this pass, if it was
    accepted: bool
    error: MeshctlError | None
    endpoints: EndpointView | None = None  # the devices' own branches, fetched with main


def update_coordination(settings: Settings, cfg: NodeConfig, now: int, fetch: bool = True) -> Coordination:
    """The newest acceptable state: freshly verified, else the last accepted one (with the reason)."""
    node = NodeState(settings.state_dir)
    if fetch:
        try:
            result = fetch_and_verify(settings.state_dir, settings.repo_dir, now, cfg=cfg, endpoints=True)
            return Coordination(result.memory, result.netmap, result.changed, None, result.endpoints)
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
    """The map of the accepted (signed) state: just verified, the caller's (`known`, the agent's
    last, whose signed map is used), or netmap.json, re-verified from the repository if that is
    damaged or out of step with trust.json (a crash between the two writes)."""
    if coord.netmap is not None:
        return coord.netmap
    memory = coord.memory
    if known is not None and known.state_sha256 == memory.state_sha256:
        return known.signed or known
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


def in_force(settings: Settings, signed: NetMap, view: EndpointView | None, now: int) -> NetMap:
    """The map this node configures from: the signed state's with the enrolled devices, rotated keys
    and expired memberships the devices' branches and the clock say (coord/effective.py)."""
    from meshctl.coord.effective import apply_view
    from meshctl.identity import load_public_keys

    return apply_view(signed, view, now, load_public_keys(settings.keys_dir)).netmap


def endpoint_view(settings: Settings, cfg: NodeConfig, coord: Coordination) -> EndpointView:
    """What the devices' branches said: fetched in this pass, else as remembered (no git)."""
    if coord.endpoints is not None:
        return coord.endpoints
    return NodeState(settings.state_dir).load_endpoint_view(cfg.network_id)


def own_enrollment(settings: Settings, cfg: NodeConfig, view: EndpointView | None) -> str | None:
    """How this device's own enrollment stands, if it has one not yet absorbed (for require_member)."""
    if NodeState(settings.state_dir).load_own_enrollment(cfg.name) is None:
        return None
    why = view.enroll_refused.get(cfg.name) if view is not None else None
    return f"is refused: {why}" if why else "is published; no node has judged it yet"


@dataclass(frozen=True, slots=True)
class Peek:
    netmap: NetMap  # the map in force
    endpoints: EndpointView | None  # the devices' branches, fetched


def peek_netmap(settings: Settings, now: int) -> Peek:
    """The newest map in force (fetched and verified), without touching the host: what the
    agent shows its path engine and DNS before its first pass."""
    cfg = NodeState(settings.state_dir).load_config()
    coord = update_coordination(settings, cfg, now)
    signed = netmap_in_force(settings, cfg, coord, now)
    return Peek(in_force(settings, signed, endpoint_view(settings, cfg, coord), now), coord.endpoints)


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


@collector_paused()
def run_pass(settings: Settings, now: int, *, dry_run: bool = False, fetch: bool = True,
             reconciler: Reconciler | None = None, endpoints: Mapping[str, str | None] | None = None,
             extra_addresses: Addresses = (), serve_dns: bool = False,
             before_apply: Callable[[], None] | None = None, known_netmap: NetMap | None = None,
             desired_of: Callable[[Inputs], Desired] = desired, publish: PublishPlan | None = None,
             prefs: Prefs | None = None, route_choices: RouteChoices | None = None) -> PassResult:
    """`endpoints` None: a pass without an agent (static endpoints of the records);
    `before_apply` runs before the host is touched (the CLI's preflight); `known_netmap`: the
    agent's map from its previous pass, reused while still in force; `publish` says what this
    device's own endpoint record would say (pushed when due, after the host is configured: the
    tunnel comes first); `prefs` (default: prefs.json) and `route_choices` (the agent's HA
    monitor) choose routes."""
    cfg = NodeState(settings.state_dir).load_config()
    coord = update_coordination(settings, cfg, now, fetch)
    signed = netmap_in_force(settings, cfg, coord, now, known_netmap)
    view = endpoint_view(settings, cfg, coord)
    netmap = in_force(settings, signed, view, now)

    def publish_now() -> Published | None:
        return None if dry_run or publish is None else publish_own_record(settings, cfg, publish, coord, signed, now)

    try:
        inputs = load_inputs(settings.keys_dir, cfg, netmap, settings.listen_port, endpoints=endpoints,
                             extra_addresses=extra_addresses, serve_dns=serve_dns,
                             was_member=was_member(settings.state_dir, known_netmap),
                             enrollment=own_enrollment(settings, cfg, view),
                             prefs=prefs or load_prefs(settings.state_dir), primaries=route_choices,
                             interface=settings.interface)
    except NotAMember:
        publish_now()  # an enrolled device not judged yet: its branch is how the nodes learn of it
        raise
    wanted = desired_of(inputs)
    reconciler = reconciler or Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
    if dry_run:
        return PassResult(netmap, reconciler.dry_run(wanted, now), coord.accepted, coord.error,
                          endpoints=coord.endpoints)
    if before_apply is not None:
        before_apply()
    result = reconciler.apply(wanted, now)
    if wanted.routes.error:  # an exit node asked for but unusable: its traffic is blocked, say so
        result.errors.append(MeshctlError(wanted.routes.error))
    record_routes(settings.state_dir, wanted)
    record_pass(settings.state_dir, now, netmap.serial, coord.error, result.errors, fetch)
    return PassResult(netmap, result.plan, coord.accepted, coord.error, tuple(result.errors),
                      result.dns_upstreams, coord.endpoints, publish_now())


def cron_publish_plan(settings: Settings, now: int) -> PublishPlan:
    """What `meshctl sync` (cron, no agent) publishes: its local addresses with WireGuard's port,
    saying no agent answers disco here, so peers use its static endpoint or candidates at once.
    Its record is refreshed for a peer that published after it (that peer may be looking)."""
    def plan(view: EndpointView | None) -> PublishRequest:
        from meshctl.coord.endpoint_publish import PublishRequest, newer_fresh_record
        from meshctl.netaddrs import ipv4_interfaces, local_candidates

        published = NodeState(settings.state_dir).load_published()
        candidates = local_candidates(ipv4_interfaces(settings.interface), settings.listen_port)
        looking = view is not None and newer_fresh_record(view.records.values(), published.at, now)
        return PublishRequest(candidates, agent=False, someone_looking=looking,
                              replaced=view is not None and view.own_replaced)

    return plan


def publish_own_record(settings: Settings, cfg: NodeConfig, plan: PublishPlan, coord: Coordination,
                       signed: NetMap, now: int) -> Published | None:
    """Push this device's endpoint record when due (coord/endpoint_publish.py). Only a member
    (or a device enrolled and not yet absorbed) publishes, and never while the repository could
    not be reached in this pass."""
    from meshctl.coord.endpoint_sync import enrollment_files, publish_if_due
    from meshctl.identity import load_device_keys

    if coord.error is not None:
        return None
    request = plan(coord.endpoints)
    if request is None:
        return None
    node = NodeState(settings.state_dir)
    own = node.load_own_enrollment(cfg.name)

    def member() -> bool:  # enrolled: the branch is how nodes learn of this device
        return own is not None or signed.peer(cfg.name) is not None

    return publish_if_due(settings.repo_dir, cfg.repo_url, node, lambda: load_device_keys(settings.keys_dir),
                          cfg.network_id, cfg.name, request, now, member, cfg.ssh_key,
                          enrollment_files(own) if own is not None else {})


def record_routes(state_dir: Path, wanted: Desired) -> None:
    """routes.json: what the last pass that applied chose (status shows it, with or without an agent)."""
    from meshctl.agent.status import ROUTES_FILE

    sel = wanted.routes
    doc = {"via": {name: [str(p) for p in prefixes] for name, prefixes in sorted(sel.via.items())},
           "exit_node": sel.exit_node, "primaries": {str(p): n for p, n in sel.primaries.items()},
           "notes": list(sel.notes), "error": sel.error,
           "forwarding": sorted(wanted.forwarding)}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    path = state_dir / ROUTES_FILE
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)


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
