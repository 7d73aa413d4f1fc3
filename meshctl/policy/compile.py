"""Policy + NetMap -> what each node enforces; `acl check`; policy tests (pure).

Semantics follow Tailscale:
- A tagged device is its tags: a user name or group never matches it, only
  `tag:x`, `autogroup:tagged`, `*` or its IP do. An untagged device is its
  owner's: it matches the owner, the owner's groups and `autogroup:member`.
- Rules only accept; anything no rule accepts is denied.
- `proto` absent means TCP, UDP and ICMP; ICMP echo is allowed from every
  source a rule lets reach the node on any port (Tailscale does the same).

`compile_filter` is what a node enforces for itself: it names only the sources
allowed to reach that node. `evaluate` answers `meshctl acl check` from that same
compiled filter, so the answer is the node's. `run_policy_tests` evaluates
`tests` by identity, because a test may name users and tags no device has yet.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from meshctl.coord.netmap import IPAddress, NetMap, Peer
from meshctl.errors import UsageError
from meshctl.policy.parse import (
    PROTO_NAMES,
    AclRule,
    Alias,
    AliasKind,
    Policy,
    PolicyTest,
    Prefix,
    TestTarget,
)
from meshctl.policy.protocols import ALL_PORTS, PORT_PROTOS, PROTO_ICMP, PROTO_ICMPV6, PortRange

ANY_V4: Final = ipaddress.ip_network("0.0.0.0/0")
ANY_V6: Final = ipaddress.ip_network("::/0")
MEMBER: Final = "autogroup:member"
TAGGED: Final = "autogroup:tagged"


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One accept rule on the receiving node, from one (acl, dst entry) pair."""

    sources: tuple[Prefix, ...]  # collapsed; IPv4 first
    destinations: tuple[IPAddress, ...]  # the node's own addresses this rule covers
    protos: tuple[int, ...]
    ports: tuple[PortRange, ...]
    rule_index: int
    line: int

    def matches(self, src: IPAddress, dst: IPAddress, proto: int, port: int | None) -> bool:
        if dst not in self.destinations or proto not in self.protos:
            return False
        if proto in PORT_PROTOS and self.ports != ALL_PORTS:
            if port is None or not any(port in r for r in self.ports):
                return False
        return any(src in p for p in self.sources)


@dataclass(frozen=True, slots=True)
class EchoRule:
    """Who may ping one of the node's addresses: every source allowed anything there."""

    destination: IPAddress
    sources: tuple[Prefix, ...]


@dataclass(frozen=True, slots=True)
class PacketFilter:
    """Everything a node must accept on its mesh interface; the rest is dropped."""

    node: str
    addresses: tuple[IPAddress, ...]
    rules: tuple[FilterRule, ...]
    echo: tuple[EchoRule, ...]
    # The mesh's own prefixes: a source in them is a member, believed only on the mesh interface.
    mesh_prefixes: tuple[Prefix, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule_index: int | None  # the acls entry that decided; None = default deny
    line: int | None
    src: IPAddress | None
    dst: IPAddress | None
    reason: str


def _host(addr: IPAddress) -> Prefix:
    return ipaddress.ip_network(addr)


# Address sets are handled as integer intervals (version, first, last): building and
# collapsing ipaddress objects for 1,000 peers costs seconds, integers milliseconds.
Span: TypeAlias = tuple[int, int, int]
_BITS: Final = {4: 32, 6: 128}


def _span_of(item: Prefix | IPAddress) -> Span:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return item.version, int(item.network_address), int(item.broadcast_address)
    return item.version, int(item), int(item)


def _merge(spans: Iterable[Span]) -> list[Span]:
    merged: list[list[int]] = []
    for version, lo, hi in sorted(spans):
        if merged and merged[-1][0] == version and lo <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], hi)
        else:
            merged.append([version, lo, hi])
    return [(v, lo, hi) for v, lo, hi in merged]


def _prefixes(spans: Iterable[Span]) -> tuple[Prefix, ...]:
    """Merged spans -> the fewest CIDR prefixes covering exactly them; IPv4 first."""
    out: list[Prefix] = []
    for version, lo, hi in _merge(spans):
        bits = _BITS[version]
        make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        while lo <= hi:
            size = lo & -lo if lo else 1 << bits  # the largest block aligned at lo
            while size > hi - lo + 1:
                size >>= 1
            out.append(make((lo, bits - size.bit_length() + 1)))
            lo += size
    return tuple(out)


def _collapse(prefixes: Iterable[Prefix]) -> tuple[Prefix, ...]:
    return _prefixes(_span_of(p) for p in prefixes)


def _covers(spans: Sequence[Span], addr: IPAddress) -> bool:
    value = int(addr)
    return any(v == addr.version and lo <= value <= hi for v, lo, hi in spans)


def peer_identities(policy: Policy, peer: Peer) -> frozenset[str]:
    """The names a device answers to in a policy."""
    if peer.tags:
        return frozenset((*peer.tags, TAGGED))
    names = {MEMBER}
    if peer.owner:
        names.update((peer.owner, *policy.groups_of(peer.owner)))
    return frozenset(names)


def _identity_match(alias: Alias, identities: frozenset[str]) -> bool:
    if alias.kind is AliasKind.ANY:
        return True
    if alias.kind in (AliasKind.USER, AliasKind.TAG):
        return alias.text in identities
    if alias.kind is AliasKind.GROUP:
        return alias.text in identities or any(u in identities for u in alias.users)
    if alias.kind is AliasKind.MEMBER:
        return MEMBER in identities
    if alias.kind is AliasKind.TAGGED:
        return TAGGED in identities
    return False


def _peer_match(policy: Policy, alias: Alias, peer: Peer) -> bool:
    if alias.prefix is not None:
        return any(a in alias.prefix for a in peer.addresses)
    return _identity_match(alias, peer_identities(policy, peer))


class _Resolver:
    """NetMap indexed once per compile: alias -> device addresses in O(matches)."""

    def __init__(self, policy: Policy, netmap: NetMap) -> None:
        self.policy = policy
        self._spans: dict[str, list[Span]] = {}
        self.by_tag: dict[str, list[Peer]] = defaultdict(list)
        self.by_owner: dict[str, list[Peer]] = defaultdict(list)
        self.untagged: list[Peer] = []
        self.tagged: list[Peer] = []
        for peer in netmap.peers:
            if peer.tags:
                self.tagged.append(peer)
                for tag in peer.tags:
                    self.by_tag[tag].append(peer)
            else:
                self.untagged.append(peer)
                self.by_owner[peer.owner].append(peer)

    def peers(self, alias: Alias) -> list[Peer]:
        if alias.kind in (AliasKind.USER, AliasKind.GROUP):
            return [p for u in dict.fromkeys(alias.users) for p in self.by_owner.get(u, ())]
        if alias.kind is AliasKind.TAG:
            return self.by_tag.get(alias.text, [])
        if alias.kind is AliasKind.MEMBER:
            return self.untagged
        if alias.kind is AliasKind.TAGGED:
            return self.tagged
        return []

    def sources(self, alias: Alias) -> list[Span]:
        cached = self._spans.get(alias.text)
        if cached is None:
            if alias.kind is AliasKind.ANY:
                cached = [_span_of(ANY_V4), _span_of(ANY_V6)]
            elif alias.prefix is not None:
                cached = [_span_of(alias.prefix)]
            else:
                cached = _merge(_span_of(a) for p in self.peers(alias) for a in p.addresses)
            self._spans[alias.text] = cached
        return cached

    def covered(self, alias: Alias, node: Peer) -> tuple[IPAddress, ...]:
        """The node's addresses a dst alias names (SELF is handled by the caller)."""
        if alias.prefix is not None:
            prefix = alias.prefix
            return tuple(a for a in node.addresses if a in prefix)
        if alias.kind is AliasKind.SELF:
            return node.addresses if not node.tags else ()
        return node.addresses if _peer_match(self.policy, alias, node) else ()


def compile_filter(policy: Policy, netmap: NetMap, node: str | None = None) -> PacketFilter:
    """The accept rules `node` (default: netmap.self_name) enforces for traffic to itself."""
    name = node if node is not None else netmap.self_name
    me = netmap.peer(name) if name else None
    if me is None:
        raise UsageError(f"{name!r} is not a member of this mesh")
    resolver = _Resolver(policy, netmap)
    rules: list[FilterRule] = []
    spans_of_rules: list[list[Span]] = []
    for acl in policy.acls:
        spans: list[Span] | None = None  # resolved lazily: most rules skip this node
        for dst in acl.destinations:
            covered = resolver.covered(dst.target, me)
            if not covered:
                continue
            if spans is None:
                spans = _merge(span for s in acl.sources for span in resolver.sources(s))
            src = spans
            if dst.target.kind is AliasKind.SELF:
                # Only the source addresses that belong to the node owner's own devices.
                own = resolver.by_owner.get(me.owner, [])
                src = _merge(_span_of(a) for p in own for a in p.addresses if _covers(spans, a))
            if src:
                rules.append(FilterRule(_prefixes(src), covered, acl.protos, dst.ports, acl.index, acl.line))
                spans_of_rules.append(src)
    echo = tuple(
        EchoRule(addr, srcs)
        for addr in me.addresses
        if (
            srcs := _prefixes(
                span
                for rule, spans in zip(rules, spans_of_rules, strict=True)
                if addr in rule.destinations
                for span in spans
                if span[0] == addr.version
            )
        )
    )
    network = netmap.network
    return PacketFilter(me.name, me.addresses, tuple(rules), echo, (network.ipv4_cidr, network.ipv6_prefix))


# -- acl check -------------------------------------------------------------------------


def proto_number(proto: str | int) -> int:
    if isinstance(proto, int):
        return proto
    text = proto.strip().lower()
    if text in PROTO_NAMES:
        return PROTO_NAMES[text]
    if text.isdigit() and int(text) <= 255:
        return int(text)
    raise UsageError(f"unknown protocol {proto!r}", hint="use tcp, udp, icmp or a number")


def resolve_endpoint(netmap: NetMap, text: str) -> tuple[Peer | None, tuple[IPAddress, ...]]:
    """A peer name or an IP -> (the member it is, if any; the addresses to test)."""
    peer = netmap.peer(text)
    if peer is not None:
        return peer, peer.addresses
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise UsageError(f"{text!r} is neither a member name nor an IP address") from None
    return netmap.peer_by_address(addr), (addr,)


def _decide(
    pf: PacketFilter,
    rules_by_index: dict[int, AclRule],
    srcs: Sequence[IPAddress],
    dsts: Sequence[IPAddress],
    proto: int,
    port: int | None,
) -> Decision:
    echo = proto in (PROTO_ICMP, PROTO_ICMPV6)
    best: Decision | None = None
    for dst in dsts:
        for src in srcs:
            if src.version != dst.version:
                continue
            for rule in pf.rules:
                hit = (
                    rule.matches(src, dst, proto, port)
                    or echo
                    and dst in rule.destinations
                    and any(src in p for p in rule.sources)
                )
                if hit and (best is None or rule.rule_index < (best.rule_index or 0)):
                    acl = rules_by_index[rule.rule_index]
                    what = "ICMP echo, allowed because " if echo and proto not in acl.protos else ""
                    best = Decision(
                        True,
                        rule.rule_index,
                        rule.line,
                        src,
                        dst,
                        f"allowed: {what}{acl.label} accepts "
                        f"{', '.join(s.text for s in acl.sources)} -> "
                        f"{', '.join(str(d) for d in acl.destinations)}",
                    )
                    break
    if best is not None:
        return best
    pairs = [(s, d) for d in dsts for s in srcs if s.version == d.version]
    if not pairs:
        return Decision(False, None, None, None, None, "denied: no common address family")
    return Decision(False, None, None, pairs[0][0], pairs[0][1], "denied: no rule accepts it (default deny)")


def evaluate(
    policy: Policy, netmap: NetMap, src: str, dst: str, port: int | None, proto: str | int = "tcp"
) -> Decision:
    """Would `dst` (a member name or mesh IP) accept a new connection from `src` on `port`?

    Answered from the filter `dst` itself would enforce. With a name, every address
    family both ends share is tried; the lowest-numbered rule that accepts decides.
    """
    number = proto_number(proto)
    _, src_addrs = resolve_endpoint(netmap, src)
    dst_peer, dst_addrs = resolve_endpoint(netmap, dst)
    if dst_peer is None:
        raise UsageError(f"no member of the mesh has address {dst}", hint="name a member or its mesh IP")
    pf = compile_filter(policy, netmap, dst_peer.name)
    return _decide(pf, {a.index: a for a in policy.acls}, src_addrs, dst_addrs, number, port)


# -- policy tests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Principal:
    """A test endpoint: the names it answers to and the addresses it may use."""

    identities: frozenset[str]
    users: frozenset[str]  # for autogroup:self; empty when tagged
    prefixes: tuple[Prefix, ...]


def _principal(policy: Policy, netmap: NetMap, alias: Alias) -> _Principal:
    resolver = _Resolver(policy, netmap)
    if alias.kind is AliasKind.USER:
        user = alias.text
        return _Principal(
            frozenset((user, MEMBER, *policy.groups_of(user))),
            frozenset((user,)),
            tuple(_host(a) for p in resolver.peers(alias) for a in p.addresses),
        )
    if alias.kind is AliasKind.GROUP:
        return _Principal(
            frozenset((alias.text, MEMBER)),
            frozenset(alias.users),
            tuple(_host(a) for p in resolver.peers(alias) for a in p.addresses),
        )
    if alias.kind is AliasKind.TAG:
        return _Principal(
            frozenset((alias.text, TAGGED)),
            frozenset(),
            tuple(_host(a) for p in resolver.peers(alias) for a in p.addresses),
        )
    assert alias.prefix is not None  # parse refuses everything else in tests
    prefix = alias.prefix
    if prefix.num_addresses == 1:
        peer = netmap.peer_by_address(prefix.network_address)
        if peer is not None:
            users = frozenset() if peer.tags or not peer.owner else frozenset((peer.owner,))
            return _Principal(peer_identities(policy, peer), users, (prefix,))
    return _Principal(frozenset(), frozenset(), (prefix,))


def _principal_match(alias: Alias, who: _Principal) -> bool:
    if alias.prefix is not None:
        target = alias.prefix
        return any(p.version == target.version and p.subnet_of(target) for p in who.prefixes)  # type: ignore[arg-type]
    return _identity_match(alias, who.identities)


def _test_allows(policy: Policy, src: _Principal, dst: _Principal, proto: int, port: int) -> AclRule | None:
    for acl in policy.acls:
        if proto not in acl.protos or not any(_principal_match(s, src) for s in acl.sources):
            continue
        for d in acl.destinations:
            if proto in PORT_PROTOS and d.ports != ALL_PORTS and not any(port in r for r in d.ports):
                continue
            if d.target.kind is AliasKind.SELF:
                if MEMBER in dst.identities and MEMBER in src.identities and src.users & dst.users:
                    return acl
            elif _principal_match(d.target, dst):
                return acl
    return None


def _proto_name(proto: int) -> str:
    return next((n for n, v in PROTO_NAMES.items() if v == proto), str(proto))


def run_policy_tests(policy: Policy, netmap: NetMap) -> list[str]:
    """One line per failed expectation in the policy's `tests`; empty when all pass."""
    problems: list[str] = []
    for test in policy.tests:
        src = _principal(policy, netmap, test.src)
        expectations: list[tuple[TestTarget, bool]] = [(t, True) for t in test.accept]
        expectations += [(t, False) for t in test.deny]
        for target, want in expectations:
            acl = _test_allows(policy, src, _principal(policy, netmap, target.target), test.proto, target.port)
            if (acl is not None) != want:
                problems.append(_test_problem(policy, test, target, want, acl))
    return problems


def _test_problem(policy: Policy, test: PolicyTest, target: TestTarget, want: bool, acl: AclRule | None) -> str:
    where = f"{policy.filename}:{target.line}:{target.col}"
    flow = f"{test.src.text} -> {target.text} ({_proto_name(test.proto)})"
    if want:
        return f"{where}: tests[{test.index}]: {flow} should be accepted, but no rule accepts it"
    assert acl is not None
    return f"{where}: tests[{test.index}]: {flow} should be denied, but {acl.label} accepts it"
