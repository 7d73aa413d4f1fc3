"""PacketFilter -> nftables JSON for table `inet meshctl` (pure).

The ruleset, for mesh interface IF, is stateless: it turns on no connection tracking.
Any `ct` expression makes the kernel track every packet of the network namespace
(WireGuard's own UDP included), which cost 10 % of a tunnel's throughput here
(bench/acl_throughput.py). Like Tailscale's filter, it lets a packet that is part of a
TCP connection through and checks the bare SYN that opens one; it keeps its own table of
UDP flows this node sent, so their replies come back:

    table inet meshctl {
        set udp4-replies, udp6-replies      # (peer, peer port, own address, own port), 2 min
        chain prerouting  { type filter hook prerouting priority mangle; policy accept;
                            iifname IF jump mesh-in }
        chain postrouting { type filter hook postrouting priority 300; policy accept;
                            oifname IF jump mesh-out }
        chain mesh-out { update @udp4-replies { ip daddr . udp dport . ip saddr . udp sport }, v6 the same }
        chain mesh-in {
            icmpv6 neighbour discovery accept     # needed where the link is not WireGuard
            ip daddr != OWN drop, ip6 the same     # a peer may only talk to this node
            non-first fragments accept             # the first fragment carries the ports; checked below
            tcp flags & (syn | ack) != syn accept  # part of a connection: only a bare SYN opens one
            UDP in @udp4-replies / @udp6-replies accept
            ICMP echo replies and errors accept
            ICMP echo from every source allowed anything on that address
            one rule per (acl, destination, family), commented "acls[i] line L"
            drop                                   # default deny for everything new
        }
    }

Filtering in prerouting, before NAT undoes a masquerade, sees what Tailscale's filter
sees: a reply to a masqueraded container arrives for the node's own address. The UDP
flows are recorded after source NAT (priority 300) for the same reason. Outbound
traffic is not filtered.

A replace keeps the reply sets' entries when their declaration is unchanged: the
transaction flushes the table's rules and adds the new ones (`flush table` leaves set
elements alone). A changed layout (say an older meshctl's chains) replaces the whole
table: `add table` (so the delete cannot fail the first time), `delete table`, then
the new table. Either way it is one kernel transaction.

Built by hand, not with pyroute2's nftables code, which mis-encodes prefixes
such as /10.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from meshctl.coord.netmap import IPAddress, Prefix
from meshctl.policy.protocols import (
    ALL_PORTS,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_UDP,
    PortRange,
)

if TYPE_CHECKING:  # annotations only: the compiler is the heavier half of the policy code
    from meshctl.policy.compile import FilterRule, PacketFilter

FAMILY: Final = "inet"
TABLE: Final = "meshctl"
CHAIN: Final = "mesh-in"
CHAIN_OUT: Final = "mesh-out"
# (hook, priority, interface match, chain it jumps to). Priorities: mangle (-150) runs
# before destination NAT undoes a masquerade; 300 runs after source NAT rewrote it.
BASE_CHAINS: Final = (("prerouting", -150, "iifname", CHAIN), ("postrouting", 300, "oifname", CHAIN_OUT))
PRIORITY_NAMES: Final = {-150: "mangle", 0: "filter"}
REPLY_SETS: Final = {4: "udp4-replies", 6: "udp6-replies"}
REPLY_SET_SIZE: Final = 65535  # when full, new flows' replies are dropped (as with a full conntrack table)
REPLY_TIMEOUT_S: Final = 120  # conntrack's timeout for a UDP flow that has seen replies
ICMP_REPLY_TYPES: Final = {
    "ip": ("echo-reply", "destination-unreachable", "time-exceeded", "parameter-problem"),
    # as nft lists them back (by type number)
    "ip6": ("destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-reply"),
}
JSON_SCHEMA_VERSION: Final = 1
# nft knows these names without /etc/protocols; other protocols are written as numbers.
PROTO_NFT_NAMES: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
ND_TYPES: Final = ("nd-neighbor-solicit", "nd-neighbor-advert")

Json: TypeAlias = "None | bool | int | str | list[Json] | dict[str, Json]"


@dataclass(frozen=True, slots=True)
class _Match:
    """One nft match, kept in both forms so JSON and text can never disagree."""

    json: Json
    text: str


@dataclass(frozen=True, slots=True)
class _Rule:
    matches: tuple[_Match, ...]
    verdict: str  # "accept", "drop", "jump:<chain>", or "" for a statement-only rule
    comment: str = ""


def _eq(left: Json, right: Json, text: str, op: str = "==") -> _Match:
    return _Match({"match": {"op": op, "left": left, "right": right}}, text)


def _span(item: Prefix | IPAddress) -> tuple[int, int, int]:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return item.version, int(item.network_address), int(item.broadcast_address)
    return item.version, int(item), int(item)


def _address_elems(items: Sequence[Prefix | IPAddress]) -> list[tuple[Json, str]]:
    """Addresses as nft lists them back: adjacent blocks merged, each a prefix or a range."""
    spans: list[list[int]] = []  # [version, first, last]; integers, not ipaddress objects, for speed
    for version, lo, hi in sorted(_span(i) for i in items):
        if spans and spans[-1][0] == version and lo <= spans[-1][2] + 1:
            spans[-1][2] = max(spans[-1][2], hi)
        else:
            spans.append([version, lo, hi])
    out: list[tuple[Json, str]] = []
    for version, lo, hi in spans:
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        first = str(make(lo))
        size = hi - lo + 1
        if size & (size - 1) or lo % size:  # not one aligned block: nft shows a range
            last = str(make(hi))
            out.append(({"range": [first, last]}, f"{first}-{last}"))
        elif size == 1:
            out.append((first, first))
        else:
            length = (32 if version == 4 else 128) - (size.bit_length() - 1)
            out.append(({"prefix": {"addr": first, "len": length}}, f"{first}/{length}"))
    return out


def _port_elems(ports: Sequence[PortRange]) -> list[tuple[Json, str]]:
    spans: list[list[int]] = []
    for r in sorted(ports, key=lambda r: (r.first, r.last)):
        if spans and r.first <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], r.last)
        else:
            spans.append([r.first, r.last])
    return [(lo, str(lo)) if lo == hi else ({"range": [lo, hi]}, f"{lo}-{hi}") for lo, hi in spans]


def _values(rendered: Sequence[tuple[Json, str]]) -> tuple[Json, str]:
    """A single value stays a value; several become an anonymous set."""
    if len(rendered) == 1:
        return rendered[0]
    return {"set": [j for j, _ in rendered]}, "{ " + ", ".join(t for _, t in rendered) + " }"


def _names(items: Sequence[str | int]) -> list[tuple[Json, str]]:
    return [(i, str(i)) for i in items]


def _addr_match(family: str, field: str, items: Sequence[Prefix | IPAddress], op: str = "==") -> _Match:
    right, text = _values(_address_elems(items))
    shown = f"{op} {text}" if op != "==" else text
    return _eq({"payload": {"protocol": family, "field": field}}, right, f"{family} {field} {shown}", op)


def _l4proto(protos: Sequence[int]) -> _Match:
    right, text = _values(_names([PROTO_NFT_NAMES.get(p, p) for p in sorted(protos)]))
    return _eq({"meta": {"key": "l4proto"}}, right, f"meta l4proto {text}")


def _dport(protos: Sequence[int], ports: Sequence[PortRange]) -> tuple[_Match, ...]:
    right, text = _values(_port_elems(ports))
    if len(protos) == 1:  # written the way nft lists it back: "tcp dport 22"
        name = PROTO_NFT_NAMES[protos[0]]
        return (_eq({"payload": {"protocol": name, "field": "dport"}}, right, f"{name} dport {text}"),)
    return (
        _l4proto(protos),
        _eq({"payload": {"protocol": "th", "field": "dport"}}, right, f"th dport {text}"),
    )


def _icmp_type(family: str, types: Sequence[str]) -> _Match:
    proto = "icmp" if family == "ip" else "icmpv6"
    right, text = _values(_names(types))
    return _eq({"payload": {"protocol": proto, "field": "type"}}, right, f"{proto} type {text}")


def _sources(family: str, sources: Sequence[Prefix]) -> tuple[_Match, ...]:
    if any(p.prefixlen == 0 for p in sources):  # "*": any source of this family
        return ()
    return (_addr_match(family, "saddr", sources),)


def _family_of(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _filter_rules(rule: FilterRule) -> list[_Rule]:
    out: list[_Rule] = []
    comment = f"acls[{rule.rule_index}] line {rule.line}"
    for version in (4, 6):
        family = _family_of(version)
        sources = [p for p in rule.sources if p.version == version]
        dests = [a for a in rule.destinations if a.version == version]
        if not sources or not dests:
            continue
        # The other family's ICMP can never match here; leave it out of the rule.
        foreign_icmp = PROTO_ICMPV6 if version == 4 else PROTO_ICMP
        protos = [p for p in rule.protos if p != foreign_icmp]
        head = (*_sources(family, sources), _addr_match(family, "daddr", dests))
        if rule.ports == ALL_PORTS:
            if protos:
                out.append(_Rule((*head, _l4proto(protos)), "accept", comment))
            continue
        with_ports = [p for p in protos if p in PORT_PROTOS]
        # Ports-only rules still let ICMP echo through (see echo rules); other
        # protocols without ports cannot appear here: parse refuses them.
        if with_ports:
            matches = (*head, *_dport(with_ports, rule.ports))
            out.append(_Rule(matches, "accept", comment))
    return out


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _flow_key(family: str, peer_first: bool) -> tuple[Json, str]:
    """(peer, peer port, own address, own port) read from an inbound or an outbound packet."""
    peer, own = ("saddr", "daddr") if peer_first else ("daddr", "saddr")
    peer_port, own_port = ("sport", "dport") if peer_first else ("dport", "sport")
    fields = ((family, peer), ("udp", peer_port), (family, own), ("udp", own_port))
    return {"concat": [_payload(p, f) for p, f in fields]}, " . ".join(f"{p} {f}" for p, f in fields)


def _own_addresses_only(pf: PacketFilter) -> list[_Rule]:
    """Drop what is not addressed to this node (a peer could ask it to route elsewhere)."""
    rules = []
    for version in (4, 6):
        family = _family_of(version)
        own = [a for a in pf.addresses if a.version == version]
        if own:
            rules.append(_Rule((_addr_match(family, "daddr", own, "!="),), "drop"))
        else:
            proto = "ipv4" if version == 4 else "ipv6"
            rules.append(_Rule((_eq({"meta": {"key": "nfproto"}}, proto, f"meta nfproto {proto}"),), "drop"))
    return rules


def _connection_packets(pf: PacketFilter) -> list[_Rule]:
    """A TCP packet that is not a bare SYN belongs to a connection already made (checked at its
    SYN, or opened by this node): nothing new starts without a SYN. First in the chain, since
    nearly every packet of a flow matches it, and each rule passed costs time."""
    flags = _eq({"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "syn", "tcp flags != syn / syn,ack", "!=")
    rules = []
    for version in (4, 6):
        own = [a for a in pf.addresses if a.version == version]
        if own:
            rules.append(_Rule((_addr_match(_family_of(version), "daddr", own), flags), "accept",
                               "part of a connection: only a bare SYN opens one"))
    return rules


def _replies_and_fragments() -> list[_Rule]:
    """What else belongs to traffic already allowed, told apart without connection tracking."""
    first_fragment_bits: Json = {"&": [_payload("ip", "frag-off"), 0x1FFF]}
    rules = [
        _Rule((_eq(first_fragment_bits, 0, "ip frag-off & 8191 != 0", "!="),), "accept",
              "fragment: its first part was checked"),
        _Rule((_eq({"exthdr": {"name": "frag", "field": "frag-off"}}, 0, "frag frag-off != 0", "!="),), "accept",
              "fragment: its first part was checked"),
    ]
    for version in (4, 6):
        key, text = _flow_key(_family_of(version), peer_first=True)
        match = _eq(key, f"@{REPLY_SETS[version]}", f"{text} @{REPLY_SETS[version]}")
        rules.append(_Rule((match,), "accept", "reply to a datagram this node sent"))
    for family, types in ICMP_REPLY_TYPES.items():
        rules.append(_Rule((_icmp_type(family, types),), "accept", "echo reply or error"))
    return rules


def _chain_rules(pf: PacketFilter) -> list[_Rule]:
    rules = [
        *_connection_packets(pf),
        _Rule((_icmp_type("ip6", ND_TYPES),), "accept", "neighbour discovery"),
        *_own_addresses_only(pf),
        *_replies_and_fragments(),
    ]
    for echo in pf.echo:
        family = _family_of(echo.destination.version)
        matches = (
            *_sources(family, echo.sources),
            _addr_match(family, "daddr", [echo.destination]),
            _icmp_type(family, ["echo-request"]),
        )
        rules.append(_Rule(matches, "accept", "echo"))
    for rule in pf.rules:
        rules.extend(_filter_rules(rule))
    rules.append(_Rule((), "drop", "default deny"))
    return rules


def _out_rules() -> list[_Rule]:
    """Record each UDP flow sent through the mesh, so its replies are let in."""
    rules = []
    for version in (4, 6):
        key, text = _flow_key(_family_of(version), peer_first=False)
        name = REPLY_SETS[version]
        rules.append(_Rule((_Match({"set": {"op": "update", "elem": key, "set": f"@{name}"}},
                                   f"update @{name} {{ {text} }}"),), ""))
    return rules


def _verdict_json(verdict: str) -> list[Json]:
    if not verdict:  # a statement-only rule (mesh-out's set updates)
        return []
    if verdict.startswith("jump:"):
        return [{"jump": {"target": verdict[5:]}}]
    return [{verdict: None}]


def _verdict_text(verdict: str) -> list[str]:
    return [verdict.replace(":", " ", 1)] if verdict else []


def _table() -> dict[str, Json]:
    return {"family": FAMILY, "name": TABLE}


def _rules_of(pf: PacketFilter, interface: str) -> list[tuple[str, _Rule]]:
    jumps = [(hook, _Rule((_eq({"meta": {"key": match}}, interface, f'{match} "{interface}"'),
                           *((_l4proto([PROTO_UDP]),) if target == CHAIN_OUT else ())), f"jump:{target}"))
             for hook, _, match, target in BASE_CHAINS]  # only UDP is recorded on the way out
    return [*jumps, *((CHAIN_OUT, r) for r in _out_rules()), *((CHAIN, r) for r in _chain_rules(pf))]


def _rule_json(chain: str, rule: _Rule) -> dict[str, Json]:
    body: dict[str, Json] = {"family": FAMILY, "table": TABLE, "chain": chain}
    body["expr"] = [m.json for m in rule.matches] + _verdict_json(rule.verdict)
    if rule.comment:
        body["comment"] = rule.comment
    return body


def _sets() -> list[dict[str, Json]]:
    return [
        {
            "family": FAMILY,
            "name": name,
            "table": TABLE,
            "type": [f"ipv{version}_addr", "inet_service", f"ipv{version}_addr", "inet_service"],
            "size": REPLY_SET_SIZE,
            "flags": ["timeout"],  # nft adds "dynamic" itself, and lists only this
            "timeout": REPLY_TIMEOUT_S,
        }
        for version, name in REPLY_SETS.items()
    ]


def _chains() -> list[dict[str, Json]]:
    base: list[dict[str, Json]] = [
        {"family": FAMILY, "table": TABLE, "name": hook, "type": "filter", "hook": hook, "prio": prio,
         "policy": "accept"}
        for hook, prio, _, _ in BASE_CHAINS
    ]
    regular: list[dict[str, Json]] = [{"family": FAMILY, "table": TABLE, "name": name} for name in (CHAIN_OUT, CHAIN)]
    return base + regular


def _layout() -> list[dict[str, Json]]:
    """The table, its sets and chains: everything but the rules."""
    objects: list[dict[str, Json]] = [{"table": _table()}]
    objects += [{"set": s} for s in _sets()]
    objects += [{"chain": c} for c in _chains()]
    return objects


def table_objects(pf: PacketFilter, interface: str) -> list[dict[str, Json]]:
    """The table, its sets, chains and rules as nft JSON objects (`{"chain": {...}}`, ...), as listed."""
    return _layout() + [{"rule": _rule_json(chain, rule)} for chain, rule in _rules_of(pf, interface)]


def replace_document(pf: PacketFilter, interface: str,
                     current: list[dict[str, Json]] | None = None) -> dict[str, Json]:
    """One `nft -j -f -` transaction that makes table inet meshctl enforce `pf`.

    `current` is the table as listed now (listed_objects). When its sets and chains are
    the ones wanted, only the rules are replaced and the UDP flows recorded so far stay.
    """
    layout = _layout()
    rules: list[Json] = [{"add": {"rule": _rule_json(chain, rule)}} for chain, rule in _rules_of(pf, interface)]
    commands: list[Json] = [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}, {"add": {"table": _table()}}]
    if current is not None and [o for o in current if "rule" not in o] == layout:
        return {"nftables": [*commands, {"flush": {"table": _table()}}, *rules]}
    commands.append({"delete": {"table": _table()}})  # the add before it makes a first delete safe
    commands += [{"add": obj} for obj in layout]
    return {"nftables": commands + rules}


def delete_document() -> dict[str, Json]:
    """Remove meshctl's table (and nothing else); a no-op if it does not exist."""
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
            {"add": {"table": _table()}},
            {"delete": {"table": _table()}},
        ]
    }


def _priority_text(prio: int) -> str:
    return PRIORITY_NAMES.get(prio, str(prio))


def render_text(pf: PacketFilter, interface: str) -> str:
    """The same ruleset as an nft script (for `--dry-run`, logs and golden tests)."""
    by_chain: dict[str, list[_Rule]] = {}
    for chain, rule in _rules_of(pf, interface):
        by_chain.setdefault(chain, []).append(rule)
    lines = [f"table {FAMILY} {TABLE} {{"]
    for s in _sets():
        types = " . ".join(str(t) for t in s["type"])  # type: ignore[union-attr]
        lines += [f"\tset {s['name']} {{", f"\t\ttype {types}", f"\t\tsize {s['size']}",
                  "\t\tflags dynamic,timeout", f"\t\ttimeout {REPLY_TIMEOUT_S}s", "\t}"]
    hooks = {hook: prio for hook, prio, _, _ in BASE_CHAINS}
    for chain in (*hooks, CHAIN_OUT, CHAIN):
        lines.append(f"\tchain {chain} {{")
        if chain in hooks:
            lines.append(f"\t\ttype filter hook {chain} priority {_priority_text(hooks[chain])}; policy accept;")
        for rule in by_chain.get(chain, []):
            parts = [m.text for m in rule.matches] + _verdict_text(rule.verdict)
            if rule.comment:
                parts.append(f'comment "{rule.comment}"')
            lines.append("\t\t" + " ".join(parts))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def listed_objects(listing: Json) -> list[dict[str, Json]]:
    """`nft -j list table` output -> objects comparable with table_objects().

    Handles go, and so do the reply sets' elements: they are traffic, not configuration.
    """
    items = listing.get("nftables") if isinstance(listing, dict) else None
    if not isinstance(items, list):
        raise ValueError("not an nft JSON listing")
    out: list[dict[str, Json]] = []
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError("unexpected item in an nft JSON listing")
        kind, body = next(iter(item.items()))
        if kind == "metainfo":
            continue
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "handle" and not (kind == "set" and k == "elem")}
        out.append({kind: body})
    return out
