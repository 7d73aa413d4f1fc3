"""The inputs of one pass, loaded once into a value: desired.desired() is a pure function of it.

Loading is the shell: node.json and the WireGuard key are read once here, the map comes from
the coordination step (verified now, or the last accepted one), and a cron pass resolves the
static endpoints of peer records (DNS). The agent passes its path engine's endpoints instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from meshctl.agent.prefs import Prefs
from meshctl.coord.netmap import NetMap, Prefix
from meshctl.coord.node_state import NodeConfig
from meshctl.errors import MeshctlError
from meshctl.identity import WIREGUARD_FILE
from meshctl.keys import NodePrivate, load_node_private
from meshctl.router.policy_routing import HostFacts, RoutePrefs

Addresses: TypeAlias = tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything a pass's desired state depends on (and nothing it reads from the host)."""

    netmap: NetMap  # the verified map in force, seen from this node
    private_key: NodePrivate
    listen_port: int
    endpoints: Mapping[str, str | None]  # peer name -> WireGuard endpoint; missing or None: roam
    extra_addresses: Addresses = ()  # on the interface besides the mesh addresses (MagicDNS's)
    serve_dns: bool = False  # MagicDNS answers on this node (the agent's server is up)
    # Issue 19: this node's route choices (prefs.json), the routers the agent's HA monitor picked
    # for prefixes several carry, what the host said about itself (read only for a node that routes).
    route_prefs: RoutePrefs = RoutePrefs()
    primaries: Mapping[Prefix, str] = field(default_factory=dict)
    host: HostFacts = HostFacts()
    snat_subnet_routes: bool = True


class NotAMember(MeshctlError):
    """This device is not in the verified state: not approved yet, or removed."""


def require_member(netmap: NetMap, cfg: NodeConfig, was_member: bool, enrollment: str | None = None) -> None:
    """A map without this node: not approved yet, expired, or removed (said so, once it had been
    in). `netmap`: the map in force (coord/effective.py); `enrollment`: how this device's own
    enrollment stands, when it has one ("is published ...", or why it is refused)."""
    if netmap.self_peer is not None:
        return
    dropped = dict(netmap.dropped).get(cfg.name)
    if dropped is not None:
        raise NotAMember(f"{cfg.name} is no longer a member of mesh {netmap.network.name}: {dropped}",
                         f"an admin renews it: meshctl admin renew {cfg.name} --expires 180d")
    if was_member:
        raise NotAMember(f"{cfg.name} was removed from mesh {netmap.network.name} at serial {netmap.serial}",
                         "an admin revoked this device; `meshctl down` removes its interface")
    if enrollment is not None:
        raise NotAMember(f"{cfg.name} is not a member of mesh {netmap.network.name} yet: its enrollment "
                         f"(branch endpoints/{cfg.name}) {enrollment}",
                         "a refused enrollment needs a valid auth key: run join again with --auth-key")
    raise NotAMember(
        f"{cfg.name} is not a member of mesh {netmap.network.name} yet (serial {netmap.serial})",
        f"the join request on branch join/{cfg.name} must be approved and merged by an admin",
    )


def load_inputs(keys_dir: Path, cfg: NodeConfig, netmap: NetMap, listen_port: int, *,
                endpoints: Mapping[str, str | None] | None = None, extra_addresses: Addresses = (),
                serve_dns: bool = False, was_member: bool = False, enrollment: str | None = None,
                prefs: Prefs | None = None, primaries: Mapping[Prefix, str] | None = None,
                interface: str = "") -> Inputs:
    """`endpoints` None: a pass without an agent, which uses the peers' static endpoints;
    `prefs` (prefs.json) and `primaries` (the agent's HA monitor) choose routes."""
    require_member(netmap, cfg, was_member, enrollment)
    if endpoints is None:
        from meshctl.agent.endpoints import static_endpoints

        endpoints = static_endpoints(netmap)
    prefs = prefs or Prefs()
    host = HostFacts()
    if prefs.accept_routes or prefs.exit_node:  # read (and resolve names) only for a node that routes
        from meshctl.router.host import host_facts

        host = host_facts(interface, cfg.repo_url, (r.address for r in netmap.relays), netmap.stun_servers)
    return Inputs(netmap, load_node_private(keys_dir / WIREGUARD_FILE), listen_port, dict(endpoints),
                  extra_addresses, serve_dns, prefs.route_prefs(), dict(primaries or {}), host,
                  prefs.snat_subnet_routes)
