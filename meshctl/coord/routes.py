"""Subnet routes and exit nodes in the signed state: what a route may be, and who carries it (pure).

A device advertises routes in its self-signed record (`advertise_routes`, `advertise_exit_node`);
admins approve them in state.json (`routes` of its assignment; 0.0.0.0/0 and ::/0 together mean
exit node). A route is used only when both say so (`effective_routes`), and only if it passes the
rules of `route_problems`, checked where a state is verified and again before an admin signs:

- it is a real network: not loopback, link-local, multicast, "this network" or reserved space;
- it never overlaps the mesh's own prefixes (members' addresses, MagicDNS's 100.100.100.100);
- it never covers a relay's address (the relay would be reached through the mesh it carries);
- it never overlaps another member's approved route, except the very same prefix: routers
  approved for one prefix are a high-availability group, one of them primary (`choose_primary`).

The git host's address, STUN servers and the node's own networks are known only on the node;
its router planner keeps them out of the tunnel (router/policy_routing.py).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

Prefix: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

EXIT_ROUTES: Final = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))
# Per record and per assignment: an 8 KiB record holds about 180 IPv6 prefixes; 128 leaves room.
MAX_ROUTES: Final = 128
MAGICDNS_ADDRESS: Final = ipaddress.IPv4Address("100.100.100.100")

# Address space that is never a network behind a router: a route inside one is refused.
_SPECIAL: Final[tuple[tuple[Prefix, str], ...]] = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
    (ipaddress.IPv6Network("::/128"), "the unspecified address"),
    (ipaddress.IPv6Network("::1/128"), "loopback"),
    (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.IPv6Network("fe80::/10"), "link-local"),
    (ipaddress.IPv6Network("ff00::/8"), "multicast"),
)


def parse_route(text: str) -> Prefix:
    """A route as written in the repository: a network in its canonical form (ValueError if not).

    Canonical means what Python and iproute2 print: no host bits (192.168.1.0/24, never
    192.168.1.7/24), lowercase and compressed IPv6, a prefix length always given.
    """
    if "/" not in text:
        raise ValueError(f"{text[:60]!r} is not a CIDR (missing /LENGTH)")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text[:60]!r} is not a CIDR") from None
    if str(net) != text:
        if net.network_address != ipaddress.ip_interface(text).ip:
            raise ValueError(f"{text[:60]!r} has host bits set; the network is {net}")
        raise ValueError(f"{text[:60]!r} is not written canonically; write {net}")
    return net


def sort_key(p: Prefix) -> tuple[int, int, int]:
    return p.version, int(p.network_address), p.prefixlen


def canonical(routes: Iterable[Prefix]) -> tuple[Prefix, ...]:
    """Sorted (IPv4 first) without duplicates: the order the repository stores them in."""
    return tuple(sorted(set(routes), key=sort_key))


def is_exit_route(p: Prefix) -> bool:
    return p.prefixlen == 0


def _span(p: Prefix) -> tuple[int, int, int]:
    return p.version, int(p.network_address), int(p.broadcast_address)


def inside(a: Prefix, b: Prefix) -> bool:
    """`a` lies wholly in `b` (or is `b`)."""
    va, fa, la = _span(a)
    vb, fb, lb = _span(b)
    return va == vb and fb <= fa and la <= lb


def overlaps(a: Prefix, b: Prefix) -> bool:
    va, fa, la = _span(a)
    vb, fb, lb = _span(b)
    return va == vb and fa <= lb and fb <= la


def special_use(p: Prefix) -> str | None:
    """Why `p` can be no network behind a router, or None."""
    return next((what for block, what in _SPECIAL if inside(p, block)), None)


def contains(p: Prefix, addr: IPAddress) -> bool:
    return p.version == addr.version and addr in p


# --- what one device offers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EffectiveRoutes:
    routes: tuple[Prefix, ...]  # advertised and approved subnet routes
    exit_node: bool  # advertised and approved exit node


def effective_routes(advertised: Sequence[Prefix], advertise_exit: bool,
                     approved: Sequence[Prefix]) -> EffectiveRoutes:
    """A route is used only when the device's record advertises it and the signed state approves it."""
    wanted = set(advertised)
    routes = canonical(r for r in approved if not is_exit_route(r) and r in wanted)
    exit_node = advertise_exit and all(r in approved for r in EXIT_ROUTES)
    return EffectiveRoutes(routes, exit_node)


def advertised_problems(routes: Sequence[Prefix], mesh: Sequence[Prefix]) -> list[str]:
    """What a device may not advertise: special space, default routes (that is exit-node use),
    anything overlapping the mesh. One line per route."""
    out = []
    for r in routes:
        if is_exit_route(r):
            out.append(f"{r}: a default route is exit-node use (--advertise-exit-node)")
        elif (why := special_use(r)) is not None:
            out.append(f"{r}: {why} addresses are no network behind a router")
        elif any(overlaps(r, m) for m in mesh):
            out.append(f"{r}: overlaps the mesh's own addresses")
    return out


# --- the rules over the whole state -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteOwner:
    """One approved route of one member, as route_problems reads it."""

    member: str
    route: Prefix


def route_problems(approved: Mapping[str, Sequence[Prefix]], mesh: Sequence[Prefix],
                   relay_addresses: Mapping[str, Sequence[IPAddress]] | None = None) -> list[str]:
    """Every rule a state's approved routes break, one line each (empty: all good).

    `approved`: member -> its approved routes (exit routes included); `mesh`: the mesh's IPv4
    and IPv6 prefixes; `relay_addresses`: relay name -> the literal addresses it is listed with.
    """
    relays = relay_addresses or {}
    problems: list[str] = []
    owners: list[RouteOwner] = []
    for member in sorted(approved):
        routes = approved[member]
        exits = [r for r in routes if is_exit_route(r)]
        if exits and len(exits) != len(EXIT_ROUTES):
            problems.append(f"member {member}: routes: 0.0.0.0/0 and ::/0 are approved together (exit node)")
        for r in routes:
            if is_exit_route(r):
                continue
            if (why := special_use(r)) is not None:
                problems.append(f"member {member}: route {r}: {why} addresses are no network behind a router")
            elif any(overlaps(r, m) for m in (*mesh, _host(MAGICDNS_ADDRESS))):
                problems.append(f"member {member}: route {r}: overlaps the mesh's own addresses")
            else:
                for relay in sorted(relays):
                    hit = next((a for a in relays[relay] if contains(r, a)), None)
                    if hit is not None:
                        problems.append(f"member {member}: route {r}: covers relay {relay}'s address {hit}")
                        break
                owners.append(RouteOwner(member, r))
    problems += _overlap_problems(owners)
    return problems


def _host(addr: IPAddress) -> Prefix:
    return ipaddress.ip_network(addr)


def _overlap_problems(owners: Sequence[RouteOwner]) -> list[str]:
    """Routes of different members that overlap without being the same prefix (an HA group).

    A sweep over the routes sorted by first address, widest first: every route still open on the
    stack when another starts contains it (prefixes nest or are disjoint), so each overlap is
    found against its nearest container in O(n log n)."""
    problems: list[str] = []
    order = sorted(owners, key=lambda o: (o.route.version, int(o.route.network_address), o.route.prefixlen,
                                          o.member))
    stack: list[RouteOwner] = []
    for cur in order:
        r = cur.route
        while stack and (stack[-1].route.version != r.version
                         or int(stack[-1].route.broadcast_address) < int(r.network_address)):
            stack.pop()
        container = next((o for o in reversed(stack) if o.member != cur.member and o.route != r), None)
        if container is not None:
            problems.append(f"member {cur.member}: route {r} overlaps {container.member}'s route {container.route} "
                            "(only the same prefix may be approved for two routers)")
        stack.append(cur)
    return problems


def ha_groups(carriers: Mapping[str, Sequence[Prefix]]) -> dict[Prefix, tuple[str, ...]]:
    """prefix -> the members carrying it (name order), for every prefix carried by more than one."""
    by_route: dict[Prefix, list[str]] = {}
    for member in sorted(carriers):
        for r in carriers[member]:
            by_route.setdefault(r, []).append(member)
    return {r: tuple(ms) for r, ms in by_route.items() if len(ms) > 1}


# --- high availability: which of a group's routers carries the traffic --------------------------


class Liveness(enum.Enum):
    ALIVE = "alive"  # answered recently (a direct path's heartbeats, or a ping over a relay)
    DEAD = "dead"  # stopped answering
    UNKNOWN = "unknown"  # not heard from yet (just started)


def choose_primary(routers: Sequence[str], liveness: Mapping[str, Liveness], current: str | None) -> str | None:
    """The router of one HA group that this node sends the prefix to.

    Deterministic and sticky: the current primary stays while it is not known dead (so traffic
    moves back only when the second router dies too); otherwise the first router in name order
    that is alive, else the first not known dead, else (all dead) the current one or the first:
    the prefix stays in the tunnel rather than leaking elsewhere.
    """
    if not routers:
        return None
    ordered = sorted(routers)
    if current in ordered and liveness.get(current, Liveness.UNKNOWN) is not Liveness.DEAD:
        return current
    for wanted in (Liveness.ALIVE, Liveness.UNKNOWN):
        pick = next((r for r in ordered if liveness.get(r, Liveness.UNKNOWN) is wanted), None)
        if pick is not None:
            return pick
    return current if current in ordered else ordered[0]
