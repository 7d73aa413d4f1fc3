"""The desired state of a node, computed purely from the verified NetMap.

(NetMap, this device's keys, listen port, endpoints chosen for peers, its route choices, the
routers the HA monitor picked, what the host said about itself) -> Desired.
Every subsystem's plan starts from this value; nothing here touches the host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from meshctl.coord.netmap import NetMap, Peer, Prefix
from meshctl.errors import ParseError
from meshctl.firewall.routed import RouterSettings
from meshctl.keys import NodePrivate
from meshctl.policy.compile import PacketFilter, compile_filter
from meshctl.policy.parse import parse_policy
from meshctl.router.config import RouterConfig
from meshctl.router.policy_routing import (
    NO_ROUTES,
    HostFacts,
    PolicyRoutingConfig,
    RoutePrefs,
    RouteSelection,
    policy_config,
    select_routes,
)
from meshctl.wg.config import HANDSHAKE_FRESH_S as HANDSHAKE_FRESH_S  # re-exported: status, tests
from meshctl.wg.config import DeviceConfig, DeviceState, PeerConfig

KEEPALIVE_S: Final = 25  # below the 30 s NAT mapping lifetime measured in the lab
NO_PREFS: Final = RoutePrefs()  # no routes accepted, no exit node
NO_FACTS: Final = HostFacts()


@dataclass(frozen=True, slots=True)
class Desired:
    wg: DeviceConfig
    router: RouterConfig
    packet_filter: PacketFilter | None  # None: the policy did not compile; keep the last filter
    policy_error: str | None = None
    # Issue 19. As a client: which peer carries which route, and meshctl's routing table and rules.
    routes: RouteSelection = NO_ROUTES
    policy_routing: PolicyRoutingConfig = PolicyRoutingConfig()
    # As a subnet router or exit node: IP forwarding wanted (IP versions), and the nft settings.
    forwarding: frozenset[int] = frozenset()
    router_settings: RouterSettings | None = None


def carried_versions(me: Peer | None) -> frozenset[int]:
    """The IP versions this node forwards for others (its approved routes; both as exit node)."""
    if me is None:
        return frozenset()
    if me.exit_node:
        return frozenset({4, 6})
    return frozenset(r.version for r in me.approved_routes)


def compile_policy(netmap: NetMap) -> tuple[PacketFilter | None, str | None]:
    """This node's inbound filter from the signed policy (default deny for everything else)."""
    if netmap.self_name is None:
        return None, None
    try:
        return compile_filter(parse_policy(netmap.policy_text), netmap), None
    except ParseError as exc:
        return None, exc.message


def allowed_ips(peer: Peer) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # From the integer, not ip_network(a): that formats and re-parses text (10x slower at 10k peers).
    return tuple(ipaddress.IPv4Network(int(a)) if a.version == 4 else ipaddress.IPv6Network(int(a))
                 for a in peer.addresses)


def compute_desired(
    netmap: NetMap,
    private_key: NodePrivate,
    listen_port: int,
    endpoints: Mapping[str, str | None],
    extra_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = (),
    route_prefs: RoutePrefs = NO_PREFS,
    primaries: Mapping[Prefix, str] | None = None,
    host: HostFacts = NO_FACTS,
    snat_subnet_routes: bool = True,
) -> Desired:
    """One WireGuard peer per other member; own addresses and the mesh routes on the interface.

    `endpoints` maps a peer name to the "IP:PORT" WireGuard should send to (resolved
    static endpoint, or the path manager's choice); a missing name means "let
    WireGuard roam" (no endpoint written). Routes through the mesh (router/policy_routing.py)
    are WireGuard allowed IPs of the peer that carries them, and routes of meshctl's table.
    """
    me = netmap.self_peer
    selection = select_routes(netmap, route_prefs, primaries or {}, host) if me is not None else NO_ROUTES
    peers = tuple(
        PeerConfig(
            public_key=p.wg_public_key,
            allowed_ips=allowed_ips(p) + selection.via.get(p.name, ()),
            endpoint=endpoints.get(p.name),
            persistent_keepalive=KEEPALIVE_S if endpoints.get(p.name) else 0,
        )
        for p in netmap.others()
    )
    router = RouterConfig.for_node(
        ipv4=me.ipv4 if me else None,
        ipv6=me.ipv6 if me else None,
        ipv4_cidr=netmap.network.ipv4_cidr,
        ipv6_prefix=netmap.network.ipv6_prefix,
        extra_addresses=extra_addresses,
    )
    packet_filter, policy_error = compile_policy(netmap)
    forwarding = carried_versions(me)
    settings = None
    if forwarding and me is not None:
        settings = RouterSettings((netmap.network.ipv4_cidr, netmap.network.ipv6_prefix), me.approved_routes,
                                  me.exit_node, snat_subnet_routes, router.mtu)
    return Desired(DeviceConfig(private_key, listen_port, peers), router, packet_filter, policy_error,
                   selection, policy_config(selection.table, listen_port), forwarding, settings)


def keep_working_endpoints(desired: Desired, state: DeviceState, now: int) -> Desired:
    """A peer whose tunnel works keeps the endpoint WireGuard uses, when nothing better is known.

    WireGuard may have roamed there, and after an agent restart the path manager knows no
    paths yet: overwriting a working tunnel would cost a write now and another one later.
    """
    current = {p.public_key: p for p in state.peers}
    peers = []
    for want in desired.wg.peers:
        have = current.get(want.public_key)
        if (want.endpoint is None and have is not None and have.endpoint and have.last_handshake
                and now - have.last_handshake < HANDSHAKE_FRESH_S):
            want = replace(want, endpoint=have.endpoint, persistent_keepalive=KEEPALIVE_S)
        peers.append(want)
    return replace(desired, wg=replace(desired.wg, peers=tuple(peers)))
