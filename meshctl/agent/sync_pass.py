"""One pass: coordination update, desired state, reconcile. Shared by `sync` and the agent.

A pass whose inputs and device match the record of the last full pass is a no-op
(agent.noop_pass): it builds no NetMap and plans nothing. Every other pass is a full one.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from meshctl.agent import noop_pass
from meshctl.agent.prefs import Prefs, load_prefs
from meshctl.coord.node_state import NodeState
from meshctl.coord.trust import TrustMemory
from meshctl.coord.update import fetch_and_verify
from meshctl.errors import GitError, MeshctlError, VerificationError
from meshctl.fsutil import atomic_write
from meshctl.settings import Settings

if TYPE_CHECKING:
    from meshctl.agent.desired import Desired
    from meshctl.agent.reconcile import Plan, Reconciler
    from meshctl.coord.endpoint_publish import Published, PublishRequest
    from meshctl.coord.endpoint_verify import EndpointView
    from meshctl.coord.netmap import NetMap, Prefix

# What this device would publish, given what the devices' branches say (None: nothing).
PublishPlan = Callable[["EndpointView | None"], "PublishRequest | None"]

log = logging.getLogger(__name__)

Addresses = tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
RouteChoices = Mapping["Prefix", str]  # HA prefixes -> the router the agent's monitor chose


@dataclass(frozen=True)
class PassResult:
    serial: int
    plan: Plan
    accepted_new_state: bool
    coordination_error: MeshctlError | None  # fetch/verify failed: the last good map was used
    apply_errors: tuple[MeshctlError, ...] = ()
    load_netmap: Callable[[], NetMap] = field(default=lambda: _no_netmap(), repr=False, compare=False)
    endpoints: EndpointView | None = None  # the devices' branches, when this pass fetched them
    published: Published | None = None  # this device's own record, when this pass looked at it

    @cached_property
    def netmap(self) -> NetMap:
        """The map in force; a no-op pass loads it only when someone asks."""
        return self.load_netmap()


def _no_netmap() -> NetMap:
    raise MeshctlError("no accepted coordination state yet", "run `meshctl sync` first")


@dataclass(frozen=True, slots=True)
class Coordination:
    memory: TrustMemory  # the accepted state in force
    netmap: NetMap | None  # built in this pass, if it was
    accepted: bool
    error: MeshctlError | None
    endpoints: EndpointView | None = None  # the devices' own branches, fetched with main


def update_coordination(settings: Settings, now: int, fetch: bool = True) -> Coordination:
    """The newest acceptable state: freshly verified, else the last accepted one (with the reason)."""
    node = NodeState(settings.state_dir)
    if fetch:
        try:
            result = fetch_and_verify(settings.state_dir, settings.repo_dir, now, endpoints=True)
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


def accepted_netmap(settings: Settings, memory: TrustMemory, now: int) -> NetMap:
    """The cached map of the accepted state, re-verified from the repository if the cache is
    damaged or out of step with trust.json (a crash between the two writes)."""
    node = NodeState(settings.state_dir)
    cfg = node.load_config()
    cached = node.load_netmap()
    if cached is not None and cached.state_sha256 == memory.state_sha256:
        return cached.with_self(cfg.name)
    try:
        rebuilt = fetch_and_verify(settings.state_dir, settings.repo_dir, now, force=True).netmap
    except (GitError, VerificationError):
        if cached is None:
            raise
        return cached.with_self(cfg.name)
    assert rebuilt is not None
    return rebuilt


def in_force(settings: Settings, base: NetMap, view: EndpointView | None, now: int) -> NetMap:
    """The map this node configures from: the signed state's with the enrolled devices, rotated keys
    and expired memberships the devices' branches and the clock say (coord/effective.py)."""
    from meshctl.coord.effective import apply_view
    from meshctl.identity import load_public_keys

    return apply_view(base, view, now, load_public_keys(settings.keys_dir)).netmap


def endpoint_view(settings: Settings, coord: Coordination) -> EndpointView:
    """What the devices' branches said: fetched in this pass, else as remembered (no git)."""
    if coord.endpoints is not None:
        return coord.endpoints
    node = NodeState(settings.state_dir)
    return node.load_endpoint_view(node.load_config().network_id)


def own_enrollment(settings: Settings, view: EndpointView | None) -> str | None:
    """How this device's own enrollment stands, if it has one not yet absorbed (for require_member)."""
    node = NodeState(settings.state_dir)
    cfg = node.load_config()
    if node.load_own_enrollment(cfg.name) is None:
        return None
    why = view.enroll_refused.get(cfg.name) if view is not None else None
    return f"is refused: {why}" if why else "is published; no node has judged it yet"


def desired_for(settings: Settings, netmap: NetMap, endpoint_overrides: Mapping[str, str | None],
                extra_addresses: Addresses = (), prefs: Prefs | None = None,
                route_choices: RouteChoices | None = None, enrollment: str | None = None) -> Desired:
    from meshctl.agent.desired import NO_FACTS, compute_desired
    from meshctl.agent.endpoints import static_endpoints
    from meshctl.coord.update import require_member
    from meshctl.identity import load_device_keys

    cfg = NodeState(settings.state_dir).load_config()
    require_member(netmap, cfg, enrollment)
    keys = load_device_keys(settings.keys_dir)
    endpoints: dict[str, str | None] = dict(static_endpoints(netmap))
    endpoints.update(endpoint_overrides)
    prefs = prefs or load_prefs(settings.state_dir)
    host = None
    if prefs.accept_routes or prefs.exit_node:  # read (and resolve names) only for a node that routes
        from meshctl.router.host import host_facts

        host = host_facts(settings.interface, cfg.repo_url, (r.address for r in netmap.relays), netmap.stun_servers)
    return compute_desired(netmap, keys.wireguard, settings.listen_port, endpoints, extra_addresses,
                           prefs.route_prefs(), route_choices, host or NO_FACTS, prefs.snat_subnet_routes)


def _resolves_names(netmap: NetMap) -> bool:
    """Static endpoints given as host names: DNS, not the state, decides what they mean."""
    for peer in netmap.others():
        for text in peer.endpoints:
            try:
                ipaddress.ip_address(text.rpartition(":")[0].strip("[]"))
            except ValueError:
                return True
    return False


def run_pass(settings: Settings, now: int, *, dry_run: bool = False, fetch: bool = True,
             reconciler: Reconciler | None = None,
             endpoint_overrides: Mapping[str, str | None] | None = None,
             extra_addresses: Addresses = (),
             before_apply: Callable[[], None] | None = None,
             known_netmap: NetMap | None = None,
             prefs: Prefs | None = None,
             route_choices: RouteChoices | None = None,
             publish: PublishPlan | None = None) -> PassResult:
    """`before_apply` runs only when the pass will touch the host (e.g. the CLI's preflight);
    `known_netmap`, the agent's map from its previous pass, is reused while still in force;
    `prefs` (default: prefs.json) and `route_choices` (the agent's HA monitor) choose routes;
    `publish` says what this device's own endpoint record would say (pushed when due)."""
    coord = update_coordination(settings, now, fetch)
    overrides = endpoint_overrides or {}
    cfg = NodeState(settings.state_dir).load_config()
    prefs = prefs or load_prefs(settings.state_dir)
    published = None if dry_run or publish is None else publish_own_record(settings, publish, coord, now)
    view = endpoint_view(settings, coord)
    inputs = noop_pass.pass_inputs(settings, cfg.name, coord.memory, overrides, extra_addresses,
                                   _routes_text(prefs, route_choices), view.digest())
    memory = coord.memory

    def load() -> NetMap:
        if coord.netmap is not None:
            return in_force(settings, coord.netmap, view, now)
        if known_netmap is not None and known_netmap.state_sha256 == memory.state_sha256:
            return in_force(settings, known_netmap.signed or known_netmap, view, now)
        return in_force(settings, accepted_netmap(settings, memory, now), view, now)

    if not dry_run and noop_pass.nothing_to_do(settings.state_dir, settings.interface, inputs, now):
        from meshctl.agent.reconcile import EMPTY_PLAN

        record_pass(settings.state_dir, now, memory.serial, coord.error, [], fetch)
        return PassResult(memory.serial, EMPTY_PLAN, coord.accepted, coord.error, load_netmap=load,
                          endpoints=coord.endpoints, published=published)
    from meshctl.agent.reconcile import Reconciler

    netmap = load()
    desired = desired_for(settings, netmap, overrides, extra_addresses, prefs, route_choices,
                          own_enrollment(settings, view))
    reconciler = reconciler or Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
    if dry_run:
        return PassResult(netmap.serial, reconciler.dry_run(desired), coord.accepted, coord.error,
                          load_netmap=lambda: netmap, endpoints=coord.endpoints)
    if before_apply is not None:
        before_apply()
    result = reconciler.apply(desired)
    if desired.routes.error:  # an exit node asked for but unusable: its traffic is blocked, say so
        result.errors.append(MeshctlError(desired.routes.error))
    record_routes(settings.state_dir, desired)
    record_pass(settings.state_dir, now, netmap.serial, coord.error, result.errors, fetch)
    # The record is only as good as its inputs: they must describe the map just applied.
    clean = not result.errors and netmap.state_sha256 == memory.state_sha256
    from meshctl.coord.effective import next_change

    noop_pass.remember_full_pass(settings.state_dir, settings.interface, inputs if clean else None,
                                 result.device, reconciler.backend.name, now, _resolves_names(netmap),
                                 next_change(netmap, now))
    return PassResult(netmap.serial, result.plan, coord.accepted, coord.error, tuple(result.errors),
                      load_netmap=lambda: netmap, endpoints=coord.endpoints, published=published)


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


def publish_own_record(settings: Settings, plan: PublishPlan, coord: Coordination, now: int) -> Published | None:
    """Push this device's endpoint record when due (coord/endpoint_publish.py). Only a member
    publishes, and never while the repository could not be reached in this pass."""
    from meshctl.coord.endpoint_sync import enrollment_files, publish_if_due
    from meshctl.identity import load_device_keys

    if coord.error is not None:
        return None
    request = plan(coord.endpoints)
    if request is None:
        return None
    node = NodeState(settings.state_dir)
    cfg = node.load_config()

    own = node.load_own_enrollment(cfg.name)

    def member() -> bool:  # asked only when a push is due: a no-op pass loads no map
        if own is not None:  # enrolled: the branch is how nodes learn of this device
            return True
        netmap = coord.netmap or node.load_netmap()
        return netmap is not None and netmap.peer(cfg.name) is not None

    return publish_if_due(settings.repo_dir, cfg.repo_url, node, lambda: load_device_keys(settings.keys_dir),
                          cfg.network_id, cfg.name, request, now, member, cfg.ssh_key,
                          enrollment_files(own) if own is not None else {})


def _routes_text(prefs: Prefs, route_choices: RouteChoices | None) -> str:
    """Route inputs for the no-op digest: a changed choice or HA primary means a full pass."""
    choices = sorted((str(p), name) for p, name in (route_choices or {}).items())
    return prefs.digest_text() + repr(choices)


def record_routes(state_dir: Path, desired: Desired) -> None:
    """routes.json: what the last full pass chose (status shows it, with or without an agent)."""
    sel = desired.routes
    doc = {"via": {name: [str(p) for p in prefixes] for name, prefixes in sorted(sel.via.items())},
           "exit_node": sel.exit_node, "primaries": {str(p): n for p, n in sel.primaries.items()},
           "notes": list(sel.notes), "error": sel.error,
           "forwarding": sorted(desired.forwarding)}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    from meshctl.agent.status import ROUTES_FILE

    path = state_dir / ROUTES_FILE
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)


def dry_run_report(settings: Settings, now: int, render: Callable[[NetMap, Plan], str],
                   prefs: Prefs | None = None) -> PassReport:
    """`sync --dry-run`: the map and the plan, rendered. The report is a pure function of the
    pass inputs and of what is read from the host, so when both match the last dry run's, its
    text is reused instead of rebuilding the map, the desired state and the plan."""
    from meshctl import __version__
    from meshctl.agent.applied import report_digest
    from meshctl.agent.reconcile import Reconciler

    coord = update_coordination(settings, now)
    cfg = NodeState(settings.state_dir).load_config()
    prefs = prefs or load_prefs(settings.state_dir)
    view = endpoint_view(settings, coord)
    inputs = noop_pass.pass_inputs(settings, cfg.name, coord.memory, {}, (), _routes_text(prefs, None), view.digest())
    reconciler = Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
    observed = reconciler.observe()
    key = (report_digest(inputs, __version__, observed.wg, observed.router, observed.table, now)
           if inputs is not None and observed.table_error is None else None)
    text = noop_pass.load_report(settings.state_dir, key) if key else None
    if text is None:
        netmap = in_force(settings, coord.netmap or accepted_netmap(settings, coord.memory, now), view, now)
        desired = desired_for(settings, netmap, {}, (), prefs, None, own_enrollment(settings, view))
        text = render(netmap, reconciler.plan_observed(desired, observed))
        if key and not _resolves_names(netmap):  # DNS, not the key, decides such endpoints
            noop_pass.save_report(settings.state_dir, key, text)
    return PassReport(text, coord.error)


@dataclass(frozen=True, slots=True)
class PassReport:
    text: str
    coordination_error: MeshctlError | None


def record_pass(state_dir: Path, now: int, serial: int, coord_error: MeshctlError | None,
                apply_errors: list[MeshctlError], fetched: bool = True) -> None:
    """last-sync.json: what `status` reports about freshness and failures.

    A pass that did not fetch (the agent re-applying its map after a path change) knows
    nothing new about the git host: it keeps the last fetch's verdict, so an unreachable
    host stays reported until a fetch succeeds."""
    path = state_dir / "last-sync.json"
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
    }
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
