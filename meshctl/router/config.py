"""Addresses, MTU and routes of the mesh interface: desired config, state and plan (pure).

What meshctl owns: everything on its own interface (addresses, MTU, up flag) except the IPv6
link-local addresses the kernel manages, and the routes through that interface whose protocol
is RTPROT_MESHCTL. Routes of any other protocol (kernel, static, a routing daemon) are never
read, planned or deleted, so a user's `ip route add ... dev mesh0` survives every sync.

Plans add before they delete (Tailscale's cidrDiff): a changed mesh address gains its new
value before it loses the old one, so a sync never leaves the node without a mesh address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, TypeAlias

from meshctl.errors import UsageError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Prefix: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Route protocol number marking meshctl's routes (`ip route ... proto 109`). 109 is 0x6d,
# ASCII "m"; it is unassigned in iproute2's rt_protos (kernel 2, boot 3, static 4, dhcp 16,
# babel 42, bird 12, zebra 11, openr 99, bgp 186, isis 187, ospf 188, rip 189, eigrp 192).
RTPROT_MESHCTL: Final = 0x6D

# wg-quick's choice: a 1500-byte underlay minus the worst-case WireGuard overhead over IPv6
# (40 IPv6 + 8 UDP + 32 WireGuard = 80). 1280 would be safe on any path but costs ~10 % of
# throughput everywhere; 1420 is what every WireGuard peer expects, and links with a smaller
# underlay MTU can set it lower. IPv6 forbids going below 1280, so that is the floor.
DEFAULT_MTU: Final = 1420
MIN_MTU: Final = 1280  # IPv6 minimum link MTU (RFC 8200)
MAX_MTU: Final = 65535

_LINK_LOCAL_V6: Final = ipaddress.IPv6Network("fe80::/10")


def _sorted_ifaces(
    items: tuple[IPInterface, ...] | frozenset[IPInterface],
) -> tuple[IPInterface, ...]:
    return tuple(sorted(set(items), key=lambda a: (a.version, a.ip, a.network.prefixlen)))


def _sorted_prefixes(items: tuple[Prefix, ...] | frozenset[Prefix]) -> tuple[Prefix, ...]:
    return tuple(sorted(set(items), key=lambda p: (p.version, p.network_address, p.prefixlen)))


def is_kernel_managed(addr: IPInterface) -> bool:
    """IPv6 link-local addresses belong to the kernel, not to meshctl."""
    return addr.version == 6 and addr.ip in _LINK_LOCAL_V6


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """What the interface should carry."""

    addresses: tuple[IPInterface, ...]
    routes: tuple[Prefix, ...]
    mtu: int = DEFAULT_MTU

    def __post_init__(self) -> None:
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise UsageError(f"MTU {self.mtu} out of range ({MIN_MTU}..{MAX_MTU})")
        object.__setattr__(self, "addresses", _sorted_ifaces(self.addresses))
        object.__setattr__(self, "routes", _sorted_prefixes(self.routes))

    @classmethod
    def for_node(
        cls,
        *,
        ipv4: ipaddress.IPv4Address | None,
        ipv6: ipaddress.IPv6Address | None,
        ipv4_cidr: ipaddress.IPv4Network | None,
        ipv6_prefix: ipaddress.IPv6Network | None,
        extra_addresses: tuple[IPInterface, ...] = (),
        mtu: int = DEFAULT_MTU,
    ) -> RouterConfig:
        """The usual shape: own /32 and /128, extras (e.g. 100.100.100.100/32), mesh routes."""
        addrs: list[IPInterface] = list(extra_addresses)
        if ipv4 is not None:
            addrs.append(ipaddress.IPv4Interface((ipv4, 32)))
        if ipv6 is not None:
            addrs.append(ipaddress.IPv6Interface((ipv6, 128)))
        routes = tuple(p for p in (ipv4_cidr, ipv6_prefix) if p is not None)
        return cls(addresses=tuple(addrs), routes=routes, mtu=mtu)


@dataclass(frozen=True, slots=True)
class RouterState:
    """What the interface carries now (only meshctl's routes; no kernel link-local)."""

    exists: bool = False
    up: bool = False
    mtu: int = 0
    addresses: tuple[IPInterface, ...] = ()
    routes: tuple[Prefix, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", _sorted_ifaces(self.addresses))
        object.__setattr__(self, "routes", _sorted_prefixes(self.routes))

    def render(self, ifname: str) -> list[str]:
        """`ip`-like lines for golden tests."""
        if not self.exists:
            return [f"{ifname}: absent"]
        lines = [f"{ifname}: {'up' if self.up else 'down'} mtu {self.mtu}"]
        lines += [f"inet{'6' if a.version == 6 else ''} {a}" for a in self.addresses]
        lines += [f"route {r} dev {ifname} proto {RTPROT_MESHCTL}" for r in self.routes]
        return lines


# --- plan operations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetMtu:
    mtu: int


@dataclass(frozen=True, slots=True)
class SetUp:
    pass


@dataclass(frozen=True, slots=True)
class AddAddress:
    address: IPInterface


@dataclass(frozen=True, slots=True)
class AddRoute:
    prefix: Prefix


@dataclass(frozen=True, slots=True)
class DelRoute:
    prefix: Prefix


@dataclass(frozen=True, slots=True)
class DelAddress:
    address: IPInterface


RouterOp: TypeAlias = SetMtu | SetUp | AddAddress | AddRoute | DelRoute | DelAddress


def describe_op(op: RouterOp, ifname: str) -> str:
    match op:
        case SetMtu(mtu):
            return f"set {ifname} mtu {mtu}"
        case SetUp():
            return f"set {ifname} up"
        case AddAddress(a):
            return f"add address {a} dev {ifname}"
        case AddRoute(p):
            return f"add route {p} dev {ifname} proto {RTPROT_MESHCTL}"
        case DelRoute(p):
            return f"delete route {p} dev {ifname} proto {RTPROT_MESHCTL}"
        case DelAddress(a):
            return f"delete address {a} dev {ifname}"


@dataclass(frozen=True, slots=True)
class RouterPlan:
    ops: tuple[RouterOp, ...] = ()

    def is_empty(self) -> bool:
        return not self.ops

    def describe(self, ifname: str) -> list[str]:
        return [describe_op(op, ifname) for op in self.ops]


def plan_router(actual: RouterState, desired: RouterConfig | None) -> RouterPlan:
    """Operations turning `actual` into `desired`; `desired=None` removes all meshctl owns.

    Order: MTU, new addresses, link up, new routes (a route needs an up link), then stale
    routes, then stale addresses.
    """
    have_addrs = {a for a in actual.addresses if not is_kernel_managed(a)}
    want_addrs = set(desired.addresses) if desired else set()
    have_routes = set(actual.routes)
    want_routes = set(desired.routes) if desired else set()
    ops: list[RouterOp] = []
    if desired is not None:
        if actual.mtu != desired.mtu:
            ops.append(SetMtu(desired.mtu))
        ops += [AddAddress(a) for a in _sorted_ifaces(frozenset(want_addrs - have_addrs))]
        if not actual.up:
            ops.append(SetUp())
        ops += [AddRoute(p) for p in _sorted_prefixes(frozenset(want_routes - have_routes))]
    ops += [DelRoute(p) for p in _sorted_prefixes(frozenset(have_routes - want_routes))]
    ops += [DelAddress(a) for a in _sorted_ifaces(frozenset(have_addrs - want_addrs))]
    return RouterPlan(tuple(ops))


def apply_plan_to_state(state: RouterState, plan: RouterPlan) -> RouterState:
    """The state a correct apply reaches (for fakes and tests)."""
    up, mtu = state.up, state.mtu
    addrs, routes = set(state.addresses), set(state.routes)
    for op in plan.ops:
        match op:
            case SetMtu(m):
                mtu = m
            case SetUp():
                up = True
            case AddAddress(a):
                addrs.add(a)
            case AddRoute(p):
                routes.add(p)
            case DelRoute(p):
                routes.discard(p)
            case DelAddress(a):
                addrs.discard(a)
    return RouterState(exists=state.exists, up=up, mtu=mtu, addresses=tuple(addrs),
                       routes=tuple(routes))
