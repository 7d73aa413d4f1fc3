"""Routes a client takes through the mesh: subnet routes, an exit node, and the policy routing that
keeps the underlay outside the tunnel (pure: selection, desired config, state, plan).

Nothing of this is installed unless the node asks: `--accept-routes` for subnet routes, and
`--exit-node NAME` for an exit node. What is installed lives in meshctl's own routing table
(TABLE_ID, like Tailscale's table 52), consulted before the main table by three rules per family:

    priority 5300  fwmark 0x6d0000/0xff0000  lookup main   meshctl's own sockets: disco, STUN, relays
    priority 5310  ipproto udp sport PORT    lookup main   WireGuard's own UDP (the underlay)
    priority 5320                            lookup 109    everything else: meshctl's table

The table holds the accepted subnet routes and, with an exit node, the default routes, all on the
mesh interface, and "throw" routes that send the lookup back to the main table:

- for the addresses a node must always reach directly (`HostFacts.keep_local`: the git host, the
  relays, the STUN servers, a DNS resolver on a local network), wherever a route covers them;
- for the host's own networks inside an accepted subnet route, and with
  `--exit-node-allow-lan-access` all of them under the exit node's default route.

A subnet route that equals or lies inside one of the host's own networks is not installed at
all (the host reaches that network directly). An exit node that is asked for but is not an
approved exit node (unknown, revoked, un-approved) installs `unreachable` default routes instead:
traffic fails loudly, it never leaks out of the physical interface. The same holds while the exit
node is down: its default route stays in the tunnel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from meshctl.coord import routes
from meshctl.coord.netmap import NetMap, Peer
from meshctl.coord.routes import EXIT_ROUTES, IPAddress, Prefix
from meshctl.router.config import RTPROT_MESHCTL
from meshctl.settings import SOCKET_MARK, SOCKET_MARK_MASK

TABLE_ID: Final = 109  # meshctl's routing table (0x6d, like RTPROT_MESHCTL)
RT_TABLE_MAIN: Final = 254
FWMARK: Final = SOCKET_MARK  # set on meshctl's own sockets (SO_MARK): they bypass the table
FWMARK_MASK: Final = SOCKET_MARK_MASK
PRIORITY_FWMARK: Final = 5300
PRIORITY_WIREGUARD: Final = 5310
PRIORITY_TABLE: Final = 5320
PRIORITIES: Final = (PRIORITY_FWMARK, PRIORITY_WIREGUARD, PRIORITY_TABLE)
IPPROTO_UDP: Final = 17

UNICAST: Final = "unicast"
THROW: Final = "throw"
UNREACHABLE: Final = "unreachable"


@dataclass(frozen=True, slots=True)
class RoutePrefs:
    """What this node asked for (agent/prefs.py)."""

    accept_routes: bool = False
    exit_node: str = ""  # a member's name or mesh address; "" = none
    exit_node_allow_lan_access: bool = False


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What only the host knows, read by the shell before a pass."""

    connected: tuple[Prefix, ...] = ()  # networks of the host's other interfaces
    keep_local: tuple[IPAddress, ...] = ()  # git host, relays, STUN servers, local DNS resolvers


def _sort_key(r: TableRoute) -> tuple[int, int, int, str]:
    return (*routes.sort_key(r.prefix), r.kind)


@dataclass(frozen=True, slots=True)
class TableRoute:
    """A route of meshctl's table: UNICAST on the mesh interface, THROW or UNREACHABLE."""

    prefix: Prefix
    kind: str = UNICAST

    def describe(self, ifname: str) -> str:
        fam = "-6 " if self.prefix.version == 6 else ""
        where = f"{self.prefix} dev {ifname}" if self.kind == UNICAST else f"{self.kind} {self.prefix}"
        return f"ip {fam}route {where} table {TABLE_ID} proto {RTPROT_MESHCTL}"


@dataclass(frozen=True, slots=True)
class RouteSelection:
    """Which peer carries which route for this node, and meshctl's table (select_routes)."""

    via: Mapping[str, tuple[Prefix, ...]] = field(default_factory=dict)  # peer -> extra allowed IPs
    table: tuple[TableRoute, ...] = ()
    exit_node: str | None = None  # in use
    primaries: Mapping[Prefix, str] = field(default_factory=dict)  # HA prefixes: the router chosen
    notes: tuple[str, ...] = ()  # routes not installed, and why
    error: str | None = None  # the exit node asked for cannot be used: traffic is blocked


NO_ROUTES: Final = RouteSelection()


def resolve_exit_node(netmap: NetMap, wanted: str) -> tuple[Peer | None, str | None]:
    """The exit node named (by name or mesh address) if it is one; else why not."""
    peer = netmap.peer(wanted)
    if peer is None:
        try:
            peer = netmap.peer_by_address(ipaddress.ip_address(wanted))
        except ValueError:
            peer = None
    if peer is None:
        return None, f"exit node {wanted!r} is not a member of the mesh"
    if peer.name == netmap.self_name:
        return None, f"exit node {wanted!r} is this node itself"
    if not peer.exit_node:
        return None, f"exit node {peer.name} is not an approved exit node"
    return peer, None


def select_routes(netmap: NetMap, prefs: RoutePrefs, primaries: Mapping[Prefix, str],
                  host: HostFacts) -> RouteSelection:
    """The routes this node sends through which peer (module docstring).

    `primaries`: for prefixes several routers carry, the router the HA monitor chose (a missing or
    stale entry falls back to routes.choose_primary's order)."""
    if not prefs.accept_routes and not prefs.exit_node:
        return NO_ROUTES
    via: dict[str, list[Prefix]] = {}
    table: list[TableRoute] = []
    notes: list[str] = []
    chosen: dict[Prefix, str] = {}
    if prefs.accept_routes:
        carriers: dict[Prefix, list[str]] = {}
        for peer in netmap.others():
            for prefix in peer.approved_routes:
                carriers.setdefault(prefix, []).append(peer.name)
        for prefix in routes.canonical(carriers):
            names = carriers[prefix]
            home = next((c for c in host.connected if routes.inside(prefix, c)), None)
            if home is not None:
                notes.append(f"route {prefix} ({', '.join(sorted(names))}): not installed, this host is on {home}")
                continue
            router = primaries.get(prefix)
            if router not in names:
                router = routes.choose_primary(names, {}, None)
            assert router is not None
            if len(names) > 1:
                chosen[prefix] = router
            via.setdefault(router, []).append(prefix)
            table.append(TableRoute(prefix))
    exit_name: str | None = None
    error: str | None = None
    if prefs.exit_node:
        exit_peer, error = resolve_exit_node(netmap, prefs.exit_node)
        if exit_peer is not None:
            exit_name = exit_peer.name
            via.setdefault(exit_name, []).extend(EXIT_ROUTES)
            table += [TableRoute(p) for p in EXIT_ROUTES]
        else:
            table += [TableRoute(p, UNREACHABLE) for p in EXIT_ROUTES]
            error = f"{error}: traffic outside the mesh is blocked (`meshctl set --exit-node \"\"` turns it off)"
    throws = _throws(table, host, prefs)
    thrown = {t.prefix for t in throws}
    for r in table:
        if r.kind == UNICAST and r.prefix in thrown:
            notes.append(f"route {r.prefix}: not installed, this node reaches it directly")
    table = [r for r in table if r.prefix not in thrown] + throws
    via_out = {name: routes.canonical(p for p in prefixes if p not in thrown) for name, prefixes in via.items()}
    return RouteSelection({n: v for n, v in via_out.items() if v}, tuple(sorted(set(table), key=_sort_key)),
                          exit_name, chosen, tuple(notes), error)


def _throws(table: Sequence[TableRoute], host: HostFacts, prefs: RoutePrefs) -> list[TableRoute]:
    """THROW routes: what must stay on the physical path although a route of the table covers it."""
    covering = [r.prefix for r in table]
    out: list[Prefix] = []
    for addr in host.keep_local:
        if any(routes.contains(p, addr) for p in covering):
            out.append(ipaddress.ip_network(addr))
    for net in host.connected:
        if prefs.exit_node and prefs.exit_node_allow_lan_access:
            out.append(net)  # under the default route: the LAN stays reachable when asked
        elif any(routes.inside(net, p) and net != p for p in covering if not routes.is_exit_route(p)):
            out.append(net)  # the host's own network inside an accepted subnet route
    return [TableRoute(p, THROW) for p in routes.canonical(out)]


# --- the policy rules and the plan -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One `ip rule` of meshctl's: a priority of PRIORITIES, in one family."""

    priority: int
    version: int
    table: int
    fwmark: int = 0
    fwmask: int = 0
    sport: int = 0  # UDP source port (WireGuard's listen port)

    def describe(self) -> str:
        sel = ""
        if self.fwmark:
            sel = f"fwmark {self.fwmark:#x}/{self.fwmask:#x} "
        elif self.sport:
            sel = f"ipproto udp sport {self.sport} "
        table = "main" if self.table == RT_TABLE_MAIN else str(self.table)
        return f"ip -{self.version} rule priority {self.priority} {sel}lookup {table}"


@dataclass(frozen=True, slots=True)
class PolicyRoutingConfig:
    """meshctl's rules and table routes, as wanted (or, as PolicyRoutingState, as read)."""

    rules: frozenset[PolicyRule] = frozenset()
    routes: frozenset[TableRoute] = frozenset()

    def render(self, ifname: str) -> list[str]:
        """`ip`-like lines, for golden tests and dry runs."""
        return ([r.describe() for r in sorted(self.rules, key=lambda r: (r.version, r.priority))]
                + [r.describe(ifname) for r in sorted(self.routes, key=_sort_key)])


PolicyRoutingState: TypeAlias = PolicyRoutingConfig


def policy_config(table: Iterable[TableRoute], listen_port: int) -> PolicyRoutingConfig:
    """The rules that make the table apply (per family that has routes), and the table itself."""
    wanted = frozenset(table)
    rules = set()
    for version in sorted({r.prefix.version for r in wanted}):
        rules |= {PolicyRule(PRIORITY_FWMARK, version, RT_TABLE_MAIN, fwmark=FWMARK, fwmask=FWMARK_MASK),
                  PolicyRule(PRIORITY_WIREGUARD, version, RT_TABLE_MAIN, sport=listen_port),
                  PolicyRule(PRIORITY_TABLE, version, TABLE_ID)}
    return PolicyRoutingConfig(frozenset(rules), wanted)


@dataclass(frozen=True, slots=True)
class AddTableRoute:
    route: TableRoute


@dataclass(frozen=True, slots=True)
class ReplaceTableRoute:
    route: TableRoute  # the same prefix, another kind


@dataclass(frozen=True, slots=True)
class DelTableRoute:
    route: TableRoute


@dataclass(frozen=True, slots=True)
class AddRule:
    rule: PolicyRule


@dataclass(frozen=True, slots=True)
class DelRule:
    rule: PolicyRule


PolicyOp: TypeAlias = AddTableRoute | ReplaceTableRoute | DelTableRoute | AddRule | DelRule


def describe_policy_op(op: PolicyOp, ifname: str) -> str:
    match op:
        case AddTableRoute(r):
            return f"add {r.describe(ifname)}"
        case ReplaceTableRoute(r):
            return f"replace {r.describe(ifname)}"
        case DelTableRoute(r):
            return f"delete {r.describe(ifname)}"
        case AddRule(r):
            return f"add {r.describe()}"
        case DelRule(r):
            return f"delete {r.describe()}"


@dataclass(frozen=True, slots=True)
class PolicyRoutingPlan:
    ops: tuple[PolicyOp, ...] = ()

    def is_empty(self) -> bool:
        return not self.ops

    def describe(self, ifname: str) -> list[str]:
        return [describe_policy_op(op, ifname) for op in self.ops]


def plan_policy_routing(actual: PolicyRoutingState, desired: PolicyRoutingConfig) -> PolicyRoutingPlan:
    """Adds before deletes. Routes go in before the rules that send traffic to them, and the
    underlay's exceptions (lower priorities) before the table's rule; removal runs the other way
    round, so no instant sends WireGuard's own packets into its tunnel."""
    have_by_prefix = {r.prefix: r for r in actual.routes}
    want_by_prefix = {r.prefix: r for r in desired.routes}
    ops: list[PolicyOp] = []
    for prefix in routes.canonical(want_by_prefix):
        want, have = want_by_prefix[prefix], have_by_prefix.get(prefix)
        if have is None:
            ops.append(AddTableRoute(want))
        elif have != want:
            ops.append(ReplaceTableRoute(want))
    ops += [AddRule(r) for r in sorted(desired.rules - actual.rules, key=lambda r: (r.priority, r.version))]
    ops += [DelRule(r) for r in sorted(actual.rules - desired.rules, key=lambda r: (-r.priority, r.version))]
    ops += [DelTableRoute(have_by_prefix[p]) for p in routes.canonical(set(have_by_prefix) - set(want_by_prefix))]
    return PolicyRoutingPlan(tuple(ops))


def apply_policy_plan(state: PolicyRoutingState, plan: PolicyRoutingPlan) -> PolicyRoutingState:
    """The state a correct apply reaches (for fakes and tests)."""
    rules, table = set(state.rules), {r.prefix: r for r in state.routes}
    for op in plan.ops:
        match op:
            case AddTableRoute(r) | ReplaceTableRoute(r):
                table[r.prefix] = r
            case DelTableRoute(r):
                table.pop(r.prefix, None)
            case AddRule(r):
                rules.add(r)
            case DelRule(r):
                rules.discard(r)
    return PolicyRoutingConfig(frozenset(rules), frozenset(table.values()))
