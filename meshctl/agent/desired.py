"""The desired state of a node: a pure function of the pass's inputs.

    desired(inputs) -> Desired(wg, router, packet_filter, dns, routes, policy_routing, forwarding, ...)

Every subsystem's plan starts from this value (agent/plan.py); nothing here touches the host.
Routes through the mesh (issue 19, router/policy_routing.py) are WireGuard allowed IPs of the
peer that carries them (the router the HA monitor picked, else the first by name) and routes of
meshctl's own table; a subnet router or exit node wants IP forwarding and its nft settings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from meshctl.agent.inputs import Inputs
from meshctl.coord.netmap import NetMap, Peer
from meshctl.dns.os_plan import DnsWanted
from meshctl.dns.zone import MAX_REVERSE_ROUTING_DOMAINS, listen_addresses, normalize_domain, reverse_routing_domains
from meshctl.errors import ParseError
from meshctl.firewall.routed import RouterSettings
from meshctl.policy.compile import PacketFilter, compile_filter
from meshctl.policy.parse import parse_policy
from meshctl.router.config import RouterConfig
from meshctl.router.policy_routing import NO_ROUTES, PolicyRoutingConfig, RouteSelection, policy_config, select_routes
from meshctl.wg.config import DeviceConfig, PeerConfig, network

KEEPALIVE_S: Final = 25  # below the 30 s NAT mapping lifetime measured in the lab


@dataclass(frozen=True, slots=True)
class Desired:
    wg: DeviceConfig
    router: RouterConfig
    packet_filter: PacketFilter | None  # None: the policy did not compile; keep the last filter
    policy_error: str | None = None
    dns: DnsWanted | None = None  # None: meshctl serves no DNS here (what it left is restored)
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
    # From the integer, not ip_network(a): that formats and re-parses text (10x slower at 10k
    # peers); wg.config.network's objects are the ones the device's read-back shares.
    return tuple([network(a.version, int(a), a.max_prefixlen) for a in peer.addresses])


def dns_wanted(netmap: NetMap) -> DnsWanted | None:
    """MagicDNS for the mesh: its domain, the reverse zones resolved routes to it, and the
    addresses the server listens on (never upstreams: a loop). None for a domain that is no
    DNS name (the server reports that)."""
    net = netmap.network
    try:
        domain = normalize_domain(net.domain)
    except ParseError:
        return None
    reverse = (reverse_routing_domains(net.ipv4_cidr, MAX_REVERSE_ROUTING_DOMAINS)
               + reverse_routing_domains(net.ipv6_prefix, MAX_REVERSE_ROUTING_DOMAINS))
    return DnsWanted(domain, reverse, tuple(listen_addresses(netmap)))


def desired(inputs: Inputs) -> Desired:
    """One WireGuard peer per other member, own addresses and the mesh routes on the interface,
    the policy's filter, MagicDNS when it is served here.

    `inputs.endpoints` maps a peer name to the "IP:PORT" WireGuard sends to (a resolved static
    endpoint, or the path engine's choice); a missing name means "let WireGuard roam" (no
    endpoint written, and no keepalive into the void).
    """
    netmap = inputs.netmap
    me = netmap.self_peer
    endpoints = inputs.endpoints
    selection = (select_routes(netmap, inputs.route_prefs, inputs.primaries, inputs.host) if me is not None
                 else NO_ROUTES)
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
        extra_addresses=inputs.extra_addresses,
    )
    packet_filter, policy_error = compile_policy(netmap)
    forwarding = carried_versions(me)
    settings = None
    if forwarding and me is not None:
        settings = RouterSettings((netmap.network.ipv4_cidr, netmap.network.ipv6_prefix), me.approved_routes,
                                  me.exit_node, inputs.snat_subnet_routes, router.mtu)
    return Desired(DeviceConfig(inputs.private_key, inputs.listen_port, peers), router, packet_filter,
                   policy_error, dns_wanted(netmap) if inputs.serve_dns else None,
                   selection, policy_config(selection.table, inputs.listen_port), forwarding, settings)
