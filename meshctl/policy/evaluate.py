"""`meshctl acl check` and the policy's `tests`, answered by the one evaluator (pure).

Both name their endpoints as Tailscale's policy tests do: a user, group, tag, host, IP or
CIDR (`acl check` also a member's name). Each endpoint becomes the addresses traffic may come
from or go to:

- a member: its addresses;
- a host, IP or CIDR: that range (a member's IP is that member, through the compiled rules);
- a user, group or tag: every member it covers, plus a stand-in device of its own, because a
  test may name a user or tag that has no device yet. A stand-in gets addresses of the mesh
  prefixes that no member uses and no rule names, so it is matched by what names users, groups
  and tags, by `*`, and by a CIDR only if that covers a whole mesh prefix (as it would cover
  any new device).

The policy is compiled (compile.compile_rules: the same RuleSet every node cuts its filter
from) over the members plus the stand-ins, and every (source address, destination address)
pair of one family is decided by compile.first_match. The flow is accepted when some pair is;
the first rule in policy order that accepts it is named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from meshctl.coord.netmap import IPAddress, NetMap
from meshctl.errors import UsageError
from meshctl.policy import addrset
from meshctl.policy.addrset import AddrSet, Prefix, Span
from meshctl.policy.compile import (
    Device,
    Match,
    RuleSet,
    compile_rules,
    first_match,
    identity_match,
    mesh_prefixes,
    peer_identities,
    routes_carried,
    rule_order,
)
from meshctl.policy.model import AccessRule, Alias, AliasKind, Policy, PolicyTest, TestTarget
from meshctl.policy.parse import endpoint_alias
from meshctl.policy.protocols import parse_proto, proto_name

# Principals that get a stand-in device: what names devices by identity.
STAND_IN_KINDS: Final = frozenset({AliasKind.USER, AliasKind.GROUP, AliasKind.TAG})


@dataclass(frozen=True, slots=True)
class StandIn:
    """A device the mesh may get: one of a user's, a member of a group, one with a tag."""

    name: str
    addresses: tuple[IPAddress, ...]
    tags: tuple[str, ...] = ()
    owner: str = ""  # a user; for a group, the group's name (never a real owner: owners have no ':')
    approved_routes: tuple[Prefix, ...] = ()
    exit_node: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    text: str
    ranges: tuple[Span, ...]  # each tried as a whole: an address, or a CIDR's range
    stand_in: frozenset[Span] = frozenset()  # the ranges that are a stand-in's addresses
    principal: bool = True  # a member, user, group or tag (not addresses written down)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule_index: int | None  # the rule that decided; None = default deny
    line: int | None
    src: IPAddress | None  # the addresses decided on (None for a stand-in or a CIDR)
    dst: IPAddress | None
    reason: str
    section: str | None = None  # "acls" or "grants"


class Evaluator:
    """The policy compiled over the members and the stand-ins a set of questions needs."""

    def __init__(self, policy: Policy, netmap: NetMap, principals: Iterable[Alias]) -> None:
        self.policy = policy
        self.netmap = netmap
        needed = {a.text: a for a in principals if a.kind in STAND_IN_KINDS}
        self.stand_ins = _stand_ins(policy, netmap, list(needed.values()))
        devices: list[Device] = [*netmap.peers, *self.stand_ins.values()]
        self.ruleset: RuleSet = compile_rules(policy, devices, mesh_prefixes(netmap))
        self.rules_by_key = {(r.section, r.index): r for r in policy.rules}

    def endpoint(self, alias: Alias) -> Endpoint:
        if alias.names_addresses:
            return Endpoint(alias.text, alias.spans, principal=False)
        members = [d for d in self.netmap.peers if identity_match(alias, peer_identities(self.policy, d))]
        stand_in = self.stand_ins.get(alias.text)
        own = tuple(addrset.span_of(a) for a in (stand_in.addresses if stand_in else ()))
        ranges = tuple(addrset.span_of(a) for d in members for a in d.addresses) + own
        return Endpoint(alias.text, ranges, frozenset(own))

    def member(self, name: str) -> Endpoint | None:
        peer = self.netmap.peer(name)
        if peer is None:
            return None
        return Endpoint(name, tuple(addrset.span_of(a) for a in peer.addresses))

    def decide(self, src: Endpoint, dst: Endpoint, proto: int, port: int | None) -> Decision:
        """Accepted if any address pair is; the first rule in policy order (a direct match
        before an ICMP echo one) is named."""
        found: list[tuple[tuple[int, int], bool, Match, Span, Span]] = []
        for d in dst.ranges:
            for s in src.ranges:
                if s[0] == d[0] and (match := first_match(self.ruleset.rules, s, d, proto, port)):
                    found.append((rule_order(match.rule), match.echo, match, s, d))
        if found:
            _order, _echo, match, s, d = min(found, key=lambda f: (f[0], f[1]))
            rule = self.rules_by_key[(match.rule.section, match.rule.rule_index)]
            what = "ICMP echo, allowed because " if match.echo else ""
            return Decision(True, rule.index, rule.line, _shown(s, src), _shown(d, dst),
                            f"allowed: {what}{rule.label} accepts {rule.text}", rule.section)
        pairs = [(s, d) for d in dst.ranges for s in src.ranges if s[0] == d[0]]
        if not pairs:
            return Decision(False, None, None, None, None, "denied: no common address family")
        s, d = pairs[0]
        return Decision(False, None, None, _shown(s, src), _shown(d, dst), "denied: no rule accepts it (default deny)")

    def carried(self, dst: Endpoint) -> bool:
        """Would any node take traffic to these addresses: a member's, or inside an approved route?"""
        if dst.principal:
            return True
        taken = addrset.merge([*_addresses_of(self.netmap.peers),
                               *(s for p in self.netmap.peers for s in routes_carried(p, self.ruleset.mesh))])
        return all(addrset.contains(taken, r) for r in dst.ranges)


def _addresses_of(devices: Iterable[Device]) -> AddrSet:
    return addrset.of(a for d in devices for a in d.addresses)


def _shown(span: Span, endpoint: Endpoint) -> IPAddress | None:
    version, lo, hi = span
    if lo != hi or span in endpoint.stand_in:
        return None
    return addrset.address(version, lo)


def _named_spans(policy: Policy) -> list[AddrSet]:
    """Every address range the policy writes down (hosts, IP sets, CIDRs and IPs in rules and tests)."""
    named: list[AddrSet] = [addrset.of([p]) for p in policy.hosts.values()]
    named += policy.ipsets.values()
    aliases: list[Alias] = []
    for rule in policy.rules:
        aliases += rule.sources
        aliases += (a for t in rule.targets for a in t.aliases)
    for test in policy.tests:
        aliases += (test.src, *(t.target for t in (*test.accept, *test.deny)))
    named += (a.spans for a in aliases if a.names_addresses)
    return named


def _stand_ins(policy: Policy, netmap: NetMap, principals: Sequence[Alias]) -> dict[str, StandIn]:
    """A stand-in device per user, group or tag, at addresses nothing names specifically."""
    if not principals:
        return {}
    addresses: list[list[IPAddress]] = []
    for prefix in (netmap.network.ipv4_cidr, netmap.network.ipv6_prefix):
        whole = addrset.span_of(prefix)
        taken = addrset.merge([
            *_addresses_of(netmap.peers),
            *(addrset.span_of(r) for p in netmap.peers for r in p.approved_routes),
            *(s for spans in _named_spans(policy) if not addrset.contains(spans, whole) for s in spans),
        ])
        addresses.append(addrset.highest_free(prefix, taken, len(principals)))
    out: dict[str, StandIn] = {}
    for i, alias in enumerate(principals):
        own = tuple(family[i] for family in addresses if i < len(family))
        if not own:
            raise UsageError(f"no free mesh address is left to stand for a device of {alias.text!r}",
                             hint="the policy names every address of the mesh prefixes")
        if alias.kind is AliasKind.TAG:
            out[alias.text] = StandIn(f"a device tagged {alias.text}", own, tags=(alias.text,))
        else:  # a user, or a group's member (owner = the group: see _Resolver.devices)
            out[alias.text] = StandIn(f"a device of {alias.text}", own, owner=alias.text)
    return out


# -- acl check -----------------------------------------------------------------------------


def proto_number(proto: str | int) -> int:
    if isinstance(proto, int):
        return proto
    try:
        return parse_proto(proto)
    except ValueError:
        raise UsageError(f"unknown protocol {proto!r}", hint="use tcp, udp, icmp or a number") from None


def _argument(policy: Policy, netmap: NetMap, text: str) -> Alias | str:
    """A member's name (returned as is), else what a test could name."""
    if netmap.peer(text) is not None:
        return text
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return endpoint_alias(policy, text)


def evaluate(
    policy: Policy, netmap: NetMap, src: str, dst: str, port: int | None, proto: str | int = "tcp"
) -> Decision:
    """Would traffic from `src` to `dst` on `port` be accepted, and by which rule?

    SRC and DST: a member's name, a user, group, tag, host, IP or CIDR. Every address family
    both ends share is tried; the first rule in policy order that accepts decides. A
    destination that no member has and no approved route covers is still answered from the
    policy, with a note that nothing would carry it.
    """
    number = proto_number(proto)
    ends = [_argument(policy, netmap, text) for text in (src, dst)]
    evaluator = Evaluator(policy, netmap, [e for e in ends if isinstance(e, Alias)])
    src_end, dst_end = (evaluator.member(e) if isinstance(e, str) else evaluator.endpoint(e) for e in ends)
    assert src_end is not None and dst_end is not None
    decision = evaluator.decide(src_end, dst_end, number, port)
    if not evaluator.carried(dst_end):
        note = f" (no member has {dst} and no approved route covers it: nothing would carry it)"
        decision = Decision(decision.allowed, decision.rule_index, decision.line, decision.src, decision.dst,
                            decision.reason + note, decision.section)
    return decision


# -- policy tests ------------------------------------------------------------------------


def run_policy_tests(policy: Policy, netmap: NetMap) -> list[str]:
    """One line per failed expectation in the policy's `tests`; empty when all pass."""
    principals = [a for t in policy.tests for a in (t.src, *(x.target for x in (*t.accept, *t.deny)))]
    evaluator = Evaluator(policy, netmap, principals)
    problems: list[str] = []
    for test in policy.tests:
        src = evaluator.endpoint(test.src)
        expectations: list[tuple[TestTarget, bool]] = [(t, True) for t in test.accept]
        expectations += [(t, False) for t in test.deny]
        for target, want in expectations:
            decision = evaluator.decide(src, evaluator.endpoint(target.target), test.proto, target.port)
            if decision.allowed != want:
                rule = evaluator.rules_by_key.get((decision.section or "", decision.rule_index or 0))
                problems.append(_test_problem(policy, test, target, want, rule))
    return problems


def _test_problem(policy: Policy, test: PolicyTest, target: TestTarget, want: bool, rule: AccessRule | None) -> str:
    where = f"{policy.filename}:{target.line}:{target.col}"
    flow = f"{test.src.text} -> {target.text} ({proto_name(test.proto)})"
    if want:
        return f"{where}: tests[{test.index}]: {flow} should be accepted, but no rule accepts it"
    assert rule is not None
    return f"{where}: tests[{test.index}]: {flow} should be denied, but {rule.label} accepts it"

