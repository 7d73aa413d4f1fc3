"""One full pass: coordination update, desired state, reconcile. Shared by `sync` and the agent."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshctl.agent.desired import Desired, compute_desired
from meshctl.agent.endpoints import static_endpoints
from meshctl.agent.reconcile import Plan, Reconciler
from meshctl.coord.netmap import NetMap
from meshctl.coord.node_state import NodeState
from meshctl.coord.update import fetch_and_verify, require_member
from meshctl.errors import GitError, MeshctlError, VerificationError
from meshctl.fsutil import atomic_write
from meshctl.identity import load_device_keys
from meshctl.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PassResult:
    netmap: NetMap
    plan: Plan
    accepted_new_state: bool
    coordination_error: MeshctlError | None  # fetch/verify failed: the last good map was used
    apply_errors: tuple[MeshctlError, ...] = ()


def load_netmap(settings: Settings, now: int, fetch: bool = True) -> tuple[NetMap, bool, MeshctlError | None]:
    """The newest acceptable map: freshly verified, else the last accepted one (with the reason)."""
    node = NodeState(settings.state_dir)
    if fetch:
        try:
            result = fetch_and_verify(settings.state_dir, settings.repo_dir, now)
            return result.netmap, result.changed, None
        except (GitError, VerificationError) as exc:
            cached = node.load_netmap()
            if cached is None:
                raise
            log.info("coordination: %s; keeping serial %d", exc.message, cached.serial)
            return cached, False, exc
    cached = node.load_netmap()
    if cached is None:
        raise MeshctlError("no accepted coordination state yet", "run `meshctl sync` first")
    return cached, False, None


def desired_for(settings: Settings, netmap: NetMap, endpoint_overrides: Mapping[str, str | None],
                extra_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()) -> Desired:
    cfg = NodeState(settings.state_dir).load_config()
    require_member(netmap, cfg)
    keys = load_device_keys(settings.keys_dir)
    endpoints: dict[str, str | None] = dict(static_endpoints(netmap))
    endpoints.update(endpoint_overrides)
    return compute_desired(netmap, keys.wireguard, settings.listen_port, endpoints, extra_addresses)


def run_pass(settings: Settings, now: int, *, dry_run: bool = False, fetch: bool = True,
             reconciler: Reconciler | None = None,
             endpoint_overrides: Mapping[str, str | None] | None = None,
             extra_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()) -> PassResult:
    netmap, accepted, coord_error = load_netmap(settings, now, fetch)
    desired = desired_for(settings, netmap, endpoint_overrides or {}, extra_addresses)
    reconciler = reconciler or Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
    if dry_run:
        return PassResult(netmap, reconciler.dry_run(desired), accepted, coord_error)
    result = reconciler.apply(desired)
    record_pass(settings.state_dir, now, netmap.serial, coord_error, result.errors)
    return PassResult(netmap, result.plan, accepted, coord_error, tuple(result.errors))


def record_pass(state_dir: Path, now: int, serial: int, coord_error: MeshctlError | None,
                apply_errors: list[MeshctlError]) -> None:
    """last-sync.json: what `status` reports about freshness and failures."""
    path = state_dir / "last-sync.json"
    previous: dict[str, object] = {}
    try:
        previous = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        pass
    doc = {
        "at": now,
        "serial": serial,
        "coordination_ok": coord_error is None,
        "coordination_error": coord_error.message if coord_error else None,
        "last_fetch_ok_at": now if coord_error is None else previous.get("last_fetch_ok_at"),
        "apply_errors": [e.message for e in apply_errors],
    }
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
