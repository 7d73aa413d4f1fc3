"""Policy + devices -> the rule set; each node's packet filter cut from it; the one decision (pure).

There is one evaluator. `compile_rules` turns the policy's `acls` and `grants` into a RuleSet:
accept rules over addresses (who may send what to which addresses), for the whole mesh.
Everything else reads that RuleSet:

- `node_filter` cuts a node's PacketFilter from it: the rules whose destinations are the node's
  own addresses (nft.py renders them), and, kept apart, those for the routes it carries as an
  approved subnet router or exit node (`ForwardFilter`, for the forward chain).
- `first_match` decides one packet against a list of compiled rules. `meshctl acl check` and
  the policy's `tests` (evaluate.py) call it on the RuleSet; a node's filter holds the same
  rules restricted to its own addresses, so for a packet to that node both give one answer.

Semantics follow Tailscale:
- A tagged device is its tags: a user name or group never matches it, only `tag:x`,
  `autogroup:tagged`, `*` or its IP do. An untagged device is its owner's: it matches the
  owner, the owner's groups and `autogroup:member`.
- `autogroup:self` is the devices of the same owner as the source. An untagged device with no
  owner is its own owner: it is never joined with other owner-less devices.
- Rules only accept; anything no rule accepts is denied.
- `proto` absent (or a grant's "*" or bare port) means TCP, UDP and ICMP; ICMP echo is allowed
  from every source a rule lets reach the destination at all (Tailscale does the same).
- `*` as a destination is every address: members, approved routes and, through an exit node,
  the internet. A CIDR reaches into the approved routes it overlaps; `autogroup:internet` is the
  public address space, reached through exit nodes.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final, Protocol

from meshctl.coord.netmap import IPAddress, NetMap, Peer
from meshctl.errors import UsageError
from meshctl.policy import addrset
from meshctl.policy.addrset import EVERYTHING, AddrSet, Prefix, Span
from meshctl.policy.model import SECTION_ORDER, AccessRule, Alias, AliasKind, Policy
from meshctl.policy.protocols import PROTO_ICMP, PROTO_ICMPV6, Capability, PortRange

MEMBER: Final = "autogroup:member"
TAGGED: Final = "autogroup:tagged"
ICMP_PROTOS: Final = frozenset({PROTO_ICMP, PROTO_ICMPV6})
DEFAULT_ROUTES: Final = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class Identity(Protocol):
    """Who a device is to the policy: its tags, else its owner."""

    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def owner(self) -> str: ...


class Device(Identity, Protocol):
    """What the compiler reads of a member (netmap.Peer, or a test's stand-in device)."""

    @property
    def name(self) -> str: ...
    @property
    def addresses(self) -> tuple[IPAddress, ...]: ...
    @property
    def approved_routes(self) -> tuple[Prefix, ...]: ...
    @property
    def exit_node(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One accept rule of the RuleSet: from one target of one ACL or grant (and, for
    autogroup:self, one owner's devices)."""

    source_set: AddrSet
    destination_set: AddrSet
    capability: Capability
    section: str  # "acls" or "grants"
    rule_index: int
    line: int


@dataclass(frozen=True)
class FilterRule:
    """One accept rule of a node's filter: a CompiledRule with its destinations cut to the
    node's own addresses (or, in a ForwardFilter, to the routes it carries), in the forms nft
    takes. Not slotted: the address sets are computed once, on first use, by first_match."""

    sources: tuple[Prefix, ...]  # collapsed; IPv4 first
    destinations: tuple[IPAddress | Prefix, ...]
    protos: tuple[int, ...]
    ports: tuple[PortRange, ...]
    rule_index: int
    line: int
    section: str = "acls"

    @cached_property
    def source_set(self) -> AddrSet:
        return addrset.of(self.sources)

    @cached_property
    def destination_set(self) -> AddrSet:
        return addrset.of(self.destinations)

    @cached_property
    def capability(self) -> Capability:
        return Capability(self.protos, self.ports)


class Matchable(Protocol):
    """A compiled rule as first_match reads it: CompiledRule and FilterRule both are."""

    @property
    def source_set(self) -> AddrSet: ...
    @property
    def destination_set(self) -> AddrSet: ...
    @property
    def capability(self) -> Capability: ...
    @property
    def section(self) -> str: ...
    @property
    def rule_index(self) -> int: ...
    @property
    def line(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EchoRule:
    """Who may ping one of the node's addresses: every source allowed anything there."""

    destination: IPAddress
    sources: tuple[Prefix, ...]


@dataclass(frozen=True, slots=True)
class ForwardFilter:
    """What a router or exit node lets through to the networks behind it (not yet in nft).

    `routes` is what it carries: its approved routes, and everything outside the mesh when it
    is an approved exit node. `rules` are the RuleSet's rules with destinations cut to it, in
    policy order; ICMP echo passes where any rule lets the source reach the destination."""

    routes: tuple[Prefix, ...] = ()
    rules: tuple[FilterRule, ...] = ()


@dataclass(frozen=True, slots=True)
class PacketFilter:
    """Everything a node must accept on its mesh interface; the rest is dropped."""

    node: str
    addresses: tuple[IPAddress, ...]
    rules: tuple[FilterRule, ...]
    echo: tuple[EchoRule, ...]
    # The mesh's own prefixes: a source in them is a member, believed only on the mesh interface.
    mesh_prefixes: tuple[Prefix, ...] = ()
    forward: ForwardFilter = ForwardFilter()


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The compiled policy for the whole mesh, in policy order (`acls`, then `grants`)."""

    rules: tuple[CompiledRule, ...]
    mesh: AddrSet  # the mesh's own prefixes: never forwarded to a route


def peer_identities(policy: Policy, device: Identity) -> frozenset[str]:
    """The names a device answers to in a policy."""
    if device.tags:
        return frozenset((*device.tags, TAGGED))
    names = {MEMBER}
    if device.owner:
        names.update((device.owner, *policy.groups_of(device.owner)))
    return frozenset(names)


def identity_match(alias: Alias, identities: frozenset[str]) -> bool:
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


def _addresses(devices: Iterable[Device]) -> AddrSet:
    return addrset.of(a for d in devices for a in d.addresses)


class _Resolver:
    """The devices indexed once per compile: alias -> addresses in O(matches), cached."""

    def __init__(self, devices: Sequence[Device], mesh: AddrSet) -> None:
        self.mesh = mesh
        self._sets: dict[str, AddrSet] = {}
        self.by_tag: dict[str, list[Device]] = defaultdict(list)
        self.by_owner: dict[str, list[Device]] = defaultdict(list)
        self.untagged: list[Device] = []
        self.tagged: list[Device] = []
        for device in devices:
            if device.tags:
                self.tagged.append(device)
                for tag in device.tags:
                    self.by_tag[tag].append(device)
            else:
                self.untagged.append(device)
                self.by_owner[device.owner].append(device)

    @cached_property
    def owners(self) -> tuple[AddrSet, ...]:
        """autogroup:self's groups: each owner's untagged devices; an owner-less device alone."""
        groups = [_addresses(devs) for owner, devs in self.by_owner.items() if owner]
        groups += [_addresses([d]) for d in self.by_owner.get("", ())]
        return tuple(groups)

    def devices(self, alias: Alias) -> list[Device]:
        if alias.kind is AliasKind.USER:
            return self.by_owner.get(alias.text, [])
        if alias.kind is AliasKind.GROUP:  # its users' devices (and a test's stand-in owned by the group)
            return [d for u in dict.fromkeys((*alias.users, alias.text)) if u for d in self.by_owner.get(u, ())]
        if alias.kind is AliasKind.TAG:
            return self.by_tag.get(alias.text, [])
        if alias.kind is AliasKind.MEMBER:
            return self.untagged
        if alias.kind is AliasKind.TAGGED:
            return self.tagged
        return []

    def addresses(self, alias: Alias) -> AddrSet:
        """What a source or destination (other than autogroup:self) names, as addresses."""
        cached = self._sets.get(alias.text)
        if cached is None:
            if alias.kind is AliasKind.ANY:
                cached = EVERYTHING
            elif alias.kind is AliasKind.INTERNET:
                cached = addrset.subtract(alias.spans, self.mesh)  # in case the mesh uses public space
            elif alias.names_addresses:
                cached = alias.spans
            else:
                cached = _addresses(self.devices(alias))
            self._sets[alias.text] = cached
        return cached

    def union(self, aliases: Sequence[Alias]) -> AddrSet:
        if len(aliases) == 1:
            return self.addresses(aliases[0])  # already merged
        return addrset.merge(s for a in aliases for s in self.addresses(a))


def mesh_prefixes(netmap: NetMap) -> AddrSet:
    return addrset.of([netmap.network.ipv4_cidr, netmap.network.ipv6_prefix])


def compile_rules(policy: Policy, devices: Sequence[Device], mesh: AddrSet = ()) -> RuleSet:
    """The policy's accept rules over the addresses of `devices` (every member, and for tests
    their stand-ins); `mesh` is the mesh's own prefixes (see mesh_prefixes)."""
    resolver = _Resolver(devices, mesh)
    out: list[CompiledRule] = []
    for rule in policy.rules:
        out.extend(_compile_rule(rule, resolver))
    return RuleSet(tuple(out), mesh)


def _compile_rule(rule: AccessRule, resolver: _Resolver) -> Iterable[CompiledRule]:
    sources = resolver.union(rule.sources)
    if not sources:
        return
    for target in rule.targets:
        cap = target.capability
        others = [a for a in target.aliases if a.kind is not AliasKind.SELF]
        if others and (destinations := resolver.union(others)):
            yield CompiledRule(sources, destinations, cap, rule.section, rule.index, rule.line)
        if len(others) < len(target.aliases):  # autogroup:self: one rule per owner
            for own in resolver.owners:
                if src := addrset.intersect(sources, own):
                    yield CompiledRule(src, own, cap, rule.section, rule.index, rule.line)


# -- a node's filter, cut from the rule set ----------------------------------------------


def routes_carried(device: Device, mesh: AddrSet) -> AddrSet:
    """What a node forwards for others: its approved routes, and as an approved exit node
    everything; never the mesh's own prefixes."""
    routes = (*device.approved_routes, *(DEFAULT_ROUTES if device.exit_node else ()))
    return addrset.subtract(addrset.of(routes), mesh)


def _filter_rule(rule: CompiledRule, destinations: tuple[IPAddress | Prefix, ...]) -> FilterRule:
    cap = rule.capability
    return FilterRule(addrset.prefixes(rule.source_set), destinations, cap.protos, cap.ports,
                      rule.rule_index, rule.line, rule.section)


def node_filter(ruleset: RuleSet, device: Device) -> PacketFilter:
    """The accept rules `device` enforces: for its own addresses, and for the routes it carries."""
    rules: list[FilterRule] = []
    echo_sources: dict[IPAddress, list[Span]] = defaultdict(list)
    for rule in ruleset.rules:
        covered = tuple(a for a in device.addresses if addrset.contains_address(rule.destination_set, a))
        if covered:
            rules.append(_filter_rule(rule, covered))
            for addr in covered:
                echo_sources[addr].extend(s for s in rule.source_set if s[0] == addr.version)
    echo = tuple(EchoRule(a, addrset.prefixes(addrset.merge(echo_sources[a])))
                 for a in device.addresses if echo_sources[a])
    carried = routes_carried(device, ruleset.mesh)
    forward: list[FilterRule] = []
    if carried:
        for rule in ruleset.rules:
            if reached := addrset.intersect(rule.destination_set, carried):
                forward.append(_filter_rule(rule, addrset.prefixes(reached)))
    return PacketFilter(device.name, device.addresses, tuple(rules), echo, addrset.prefixes(ruleset.mesh),
                        forward=ForwardFilter(addrset.prefixes(carried), tuple(forward)))


def compile_filter(policy: Policy, netmap: NetMap, node: str | None = None) -> PacketFilter:
    """The filter `node` (default: netmap.self_name) enforces: node_filter of the mesh's RuleSet."""
    name = node if node is not None else netmap.self_name
    me = netmap.peer(name) if name else None
    if me is None:
        raise UsageError(f"{name!r} is not a member of this mesh")
    return node_filter(compile_rules(policy, netmap.peers, mesh_prefixes(netmap)), me)


# -- the decision --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    rule: Matchable
    echo: bool  # ICMP echo, let through because the rule lets the source reach the destination


def first_match(rules: Sequence[Matchable], src: Span, dst: Span, proto: int, port: int | None) -> Match | None:
    """The first rule (in policy order) that accepts traffic from every address of `src` to
    every address of `dst` (single addresses for a packet), or None: default deny.

    ICMP with no rule for it is an echo request: accepted where any rule lets `src` reach `dst`.
    """
    reaching = [r for r in rules
                if addrset.contains(r.source_set, src) and addrset.contains(r.destination_set, dst)]
    for rule in reaching:
        if rule.capability.matches(proto, port):
            return Match(rule, echo=False)
    if proto in ICMP_PROTOS and reaching:
        return Match(reaching[0], echo=True)
    return None


def rule_order(rule: Matchable) -> tuple[int, int]:
    return SECTION_ORDER.index(rule.section), rule.rule_index


def __getattr__(name: str) -> object:
    """`evaluate` and `run_policy_tests` live in evaluate.py (which imports this module); older
    callers import them from here."""
    if name in ("evaluate", "run_policy_tests", "Decision"):
        from meshctl.policy import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CompiledRule", "Device", "EchoRule", "FilterRule", "ForwardFilter", "Match", "PacketFilter", "Peer",
           "RuleSet", "compile_filter", "compile_rules", "first_match", "node_filter", "peer_identities"]
