"""The packet filter as nft rules, before any table or chain holds them (pure).

`inbound_rules` is what a node accepts on its mesh interface; `outbound_rules` records the
UDP flows it sends, so their replies are let in; `strong_host_rules` keep the mesh's
addresses to the mesh interface (every interface's packets pass them). nft.py puts them into
tables.

No rule uses connection tracking: any `ct` expression makes the kernel track every packet
of the network namespace (WireGuard's own UDP included), which cost 10 % of a tunnel's
throughput here (bench/acl_throughput.py). Like Tailscale's filter, a packet that is part of
a TCP connection passes and the bare SYN that opens one is checked; the flows this node
sent are kept in nft sets (REPLY_SETS) so that UDP replies come back:

    TCP to an own address, not a bare SYN        accept   (first: nearly every packet matches)
    ICMPv6 neighbour discovery                   accept   (needed where the link is not WireGuard)
    not to an own address                        drop     (a peer may only talk to this node)
    a later fragment                             accept   (its first part carried the ports)
    UDP answering a flow in @udpN-replies        accept
    ICMP echo replies and errors                 accept
    ICMP echo from a source allowed anything on that address      accept
    one rule per (rule, destination, family), commented "acls[i] line L" (or grants[i])   accept
    anything else                                drop     (default deny)

Every match is kept in two forms, nft JSON and nft text, built side by side so they cannot
disagree: JSON is what is loaded, text is what `--dry-run`, logs and golden tests show.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from meshctl.coord.netmap import IPAddress, Prefix
from meshctl.dns.zone import MAGIC_ADDRESS
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

REPLY_SETS: Final = {4: "udp4-replies", 6: "udp6-replies"}
ROUTED_CHAIN: Final = "routed"  # the policy for routed traffic (firewall/routed.py), beside the inbound chain
ICMP_REPLY_TYPES: Final = {
    "ip": ("echo-reply", "destination-unreachable", "time-exceeded", "parameter-problem"),
    # as nft lists them back (by type number)
    "ip6": ("destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-reply"),
}
# nft knows these names without /etc/protocols; other protocols are written as numbers.
PROTO_NFT_NAMES: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
ND_TYPES: Final = ("nd-neighbor-solicit", "nd-neighbor-advert")

Json: TypeAlias = "None | bool | int | str | list[Json] | dict[str, Json]"


@dataclass(frozen=True, slots=True)
class Match:
    """One nft match, kept in both forms so JSON and text can never disagree."""

    json: Json
    text: str


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: str  # "accept", "drop", "jump:<chain>", or "" for a statement-only rule
    comment: str = ""


def eq(left: Json, right: Json, text: str, op: str = "==") -> Match:
    return Match({"match": {"op": op, "left": left, "right": right}}, text)


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


def addr_match(family: str, field: str, items: Sequence[Prefix | IPAddress], op: str = "==") -> Match:
    right, text = _values(_address_elems(items))
    shown = f"{op} {text}" if op != "==" else text
    return eq({"payload": {"protocol": family, "field": field}}, right, f"{family} {field} {shown}", op)


def l4proto(protos: Sequence[int]) -> Match:
    right, text = _values(_names([PROTO_NFT_NAMES.get(p, p) for p in sorted(protos)]))
    return eq({"meta": {"key": "l4proto"}}, right, f"meta l4proto {text}")


def _dport(protos: Sequence[int], ports: Sequence[PortRange]) -> tuple[Match, ...]:
    right, text = _values(_port_elems(ports))
    if len(protos) == 1:  # written the way nft lists it back: "tcp dport 22"
        name = PROTO_NFT_NAMES[protos[0]]
        return (eq({"payload": {"protocol": name, "field": "dport"}}, right, f"{name} dport {text}"),)
    return (
        l4proto(protos),
        eq({"payload": {"protocol": "th", "field": "dport"}}, right, f"th dport {text}"),
    )


def icmp_type(family: str, types: Sequence[str]) -> Match:
    proto = "icmp" if family == "ip" else "icmpv6"
    right, text = _values(_names(types))
    return eq({"payload": {"protocol": proto, "field": "type"}}, right, f"{proto} type {text}")


def source_match(family: str, sources: Sequence[Prefix]) -> tuple[Match, ...]:
    if any(p.prefixlen == 0 for p in sources):  # "*": any source of this family
        return ()
    return (addr_match(family, "saddr", sources),)


def family_of(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def policy_rules(rule: FilterRule) -> list[Rule]:
    out: list[Rule] = []
    comment = f"{rule.section}[{rule.rule_index}] line {rule.line}"
    for version in (4, 6):
        family = family_of(version)
        sources = [p for p in rule.sources if p.version == version]
        dests = [a for a in rule.destinations if a.version == version]
        if not sources or not dests:
            continue
        # The other family's ICMP can never match here; leave it out of the rule.
        foreign_icmp = PROTO_ICMPV6 if version == 4 else PROTO_ICMP
        protos = [p for p in rule.protos if p != foreign_icmp]
        head = (*source_match(family, sources), addr_match(family, "daddr", dests))
        if rule.ports == ALL_PORTS:
            if protos:
                out.append(Rule((*head, l4proto(protos)), "accept", comment))
            continue
        with_ports = [p for p in protos if p in PORT_PROTOS]
        # Ports-only rules still let ICMP echo through (see echo rules); other
        # protocols without ports cannot appear here: parse refuses them.
        if with_ports:
            matches = (*head, *_dport(with_ports, rule.ports))
            out.append(Rule(matches, "accept", comment))
    return out


def payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _flow_key(family: str, peer_first: bool) -> tuple[Json, str]:
    """(peer, peer port, own address, own port) read from an inbound or an outbound packet."""
    peer, own = ("saddr", "daddr") if peer_first else ("daddr", "saddr")
    peer_port, own_port = ("sport", "dport") if peer_first else ("dport", "sport")
    fields = ((family, peer), ("udp", peer_port), (family, own), ("udp", own_port))
    return {"concat": [payload(p, f) for p, f in fields]}, " . ".join(f"{p} {f}" for p, f in fields)


def _own_addresses_only(pf: PacketFilter, netdev: bool) -> list[Rule]:
    """Drop what is not addressed to this node (a peer could ask it to route elsewhere)."""
    rules = []
    for version in (4, 6):
        family = family_of(version)
        own = [a for a in pf.addresses if a.version == version]
        if own:
            rules.append(Rule((addr_match(family, "daddr", own, "!="),), "drop"))
        elif netdev:
            rules.append(Rule((eq({"meta": {"key": "protocol"}}, family, f"meta protocol {family}"),), "drop"))
        else:
            proto = "ipv4" if version == 4 else "ipv6"
            rules.append(Rule((eq({"meta": {"key": "nfproto"}}, proto, f"meta nfproto {proto}"),), "drop"))
    return rules


def not_a_bare_syn() -> Match:
    """A TCP packet other than the SYN that opens a connection."""
    return eq({"&": [payload("tcp", "flags"), ["syn", "ack"]]}, "syn", "tcp flags != syn / syn,ack", "!=")


def _connection_packets(pf: PacketFilter) -> list[Rule]:
    """A TCP packet that is not a bare SYN belongs to a connection already made (checked at its
    SYN, or opened by this node): nothing new starts without a SYN. First in the chain, since
    nearly every packet of a flow matches it, and each rule passed costs time."""
    flags = not_a_bare_syn()
    rules = []
    for version in (4, 6):
        own = [a for a in pf.addresses if a.version == version]
        if own:
            rules.append(Rule((addr_match(family_of(version), "daddr", own), flags), "accept",
                               "part of a connection: only a bare SYN opens one"))
    return rules


def replies_and_fragments() -> list[Rule]:
    """What else belongs to traffic already allowed, told apart without connection tracking."""
    first_fragment_bits: Json = {"&": [payload("ip", "frag-off"), 0x1FFF]}
    rules = [
        Rule((eq(first_fragment_bits, 0, "ip frag-off & 8191 != 0", "!="),), "accept",
              "fragment: its first part was checked"),
        Rule((eq({"exthdr": {"name": "frag", "field": "frag-off"}}, 0, "frag frag-off != 0", "!="),), "accept",
              "fragment: its first part was checked"),
    ]
    for version in (4, 6):
        key, text = _flow_key(family_of(version), peer_first=True)
        match = eq(key, f"@{REPLY_SETS[version]}", f"{text} @{REPLY_SETS[version]}")
        rules.append(Rule((match,), "accept", "reply to a datagram this node sent"))
    for family, types in ICMP_REPLY_TYPES.items():
        rules.append(Rule((icmp_type(family, types),), "accept", "echo reply or error"))
    return rules


def inbound_rules(pf: PacketFilter, netdev: bool, routed: bool = False) -> list[Rule]:
    """What a node accepts on its mesh interface, first match wins, default deny last.

    `netdev`: for a netdev-family chain, which sees every packet of the interface (no `meta
    nfproto` there: `meta protocol` says the same). Its non-IP packets are let through after the
    connection packets, which imply IP and are nearly all of the traffic.
    `routed`: the table has a ROUTED_CHAIN for the routes this node carries (a subnet router or
    exit node); without it, such packets meet the drop of what is not for this node.
    """
    rules = [
        *_connection_packets(pf),
        *((_non_ip(),) if netdev else ()),
        Rule((icmp_type("ip6", ND_TYPES),), "accept", "neighbour discovery"),
        *(_to_routes(pf) if routed else ()),
        *_own_addresses_only(pf, netdev),
        *replies_and_fragments(),
    ]
    for echo in pf.echo:
        family = family_of(echo.destination.version)
        matches = (
            *source_match(family, echo.sources),
            addr_match(family, "daddr", [echo.destination]),
            icmp_type(family, ["echo-request"]),
        )
        rules.append(Rule(matches, "accept", "echo"))
    for rule in pf.rules:
        rules.extend(policy_rules(rule))
    rules.append(Rule((), "drop", "default deny"))
    return rules


def _to_routes(pf: PacketFilter) -> list[Rule]:
    """On a subnet router or exit node: what is for the routes it carries goes to the ROUTED_CHAIN,
    which applies the policy to routed traffic (firewall/routed.py). Also a packet for the
    router's own address inside such a route: the route's rules decide it, as Tailscale's do."""
    rules = []
    for version in (4, 6):
        carried = [p for p in pf.forward.routes if p.version == version]
        if carried:
            rules.append(Rule((addr_match(family_of(version), "daddr", carried),), f"jump:{ROUTED_CHAIN}",
                              "routed: the policy for the routes this node carries"))
    return rules


def _non_ip() -> Rule:
    key: Json = {"meta": {"key": "protocol"}}
    return Rule((eq(key, {"set": ["ip", "ip6"]}, "meta protocol != { ip, ip6 }", "!="),), "accept",
                "not IP: nothing to filter")


def outbound_rules(netdev: bool) -> list[Rule]:
    """Record each UDP flow sent through the mesh, so its replies are let in.

    `netdev`: the chain sees every packet sent (the HOOKS layout jumps here for UDP only);
    anything else leaves at the first rule, in one comparison.
    """
    not_udp = eq({"meta": {"key": "l4proto"}}, PROTO_NFT_NAMES[PROTO_UDP], "meta l4proto != udp", "!=")
    rules = [Rule((not_udp,), "accept", "only UDP flows are recorded")] if netdev else []
    for version in (4, 6):
        key, text = _flow_key(family_of(version), peer_first=False)
        name = REPLY_SETS[version]
        rules.append(Rule((Match({"set": {"op": "update", "elem": key, "set": f"@{name}"}},
                                   f"update @{name} {{ {text} }}"),), ""))
    return rules


def strong_host_rules(pf: PacketFilter, interface: str) -> list[Rule]:
    """The strong host model for the mesh's addresses, for packets arriving on any interface.

    Linux takes a packet for any of its addresses on whatever interface it arrives (the weak
    host model): a LAN neighbour that routes 100.64.0.0/10 via this node would reach every
    service bound to its mesh address, around the policy, which only sees the mesh interface.
    So, before anything else of the host sees a packet: what arrives on the mesh interface or
    loopback goes on (the mesh's own filter decides); elsewhere a packet for one of the node's
    mesh addresses or MagicDNS's, or from inside the mesh's prefixes, is dropped. Nothing else
    is touched: routed traffic between the mesh and a LAN keeps working, in both directions.
    """
    iifname: Json = {"meta": {"key": "iifname"}}
    rules = [
        Rule((eq(iifname, interface, f'iifname "{interface}"'),), "accept", "the mesh: its own filter decides"),
        Rule((eq({"meta": {"key": "iif"}}, "lo", 'iif "lo"'),), "accept", "this node itself"),
    ]
    magic = ipaddress.ip_address(MAGIC_ADDRESS)
    for version in (4, 6):
        family = family_of(version)
        own = [a for a in (*pf.addresses, magic) if a.version == version]
        if own:
            rules.append(Rule((addr_match(family, "daddr", own),), "drop", "a mesh address, not through the mesh"))
        prefixes = [p for p in pf.mesh_prefixes if p.version == version]
        if prefixes:
            rules.append(Rule((addr_match(family, "saddr", prefixes),), "drop", "a mesh source, not from the mesh"))
    return rules
