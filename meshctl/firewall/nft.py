"""PacketFilter -> nftables JSON for table `inet meshctl` (pure).

The ruleset, for mesh interface IF:

    table inet meshctl {
        chain input   { type filter hook input priority filter; policy accept;
                        iifname IF jump mesh-in }
        chain forward { type filter hook forward priority filter; policy accept;
                        iifname IF jump mesh-in }
        chain mesh-in {
            ct state established,related accept   # replies, and flows accepted before
            ct state invalid drop
            icmpv6 neighbour discovery accept     # needed where the link is not WireGuard
            ICMP echo from every source allowed anything on that address
            one rule per (acl, destination, family), commented "acls[i] line L"
            drop                                  # default deny for new inbound
        }
    }

Only traffic that arrives on the mesh interface is filtered; outbound traffic
and other interfaces pass (policy accept). Forwarded traffic from the mesh is
held to the same rules, and since meshctl routes no subnets, no new flow is
forwarded. Rules match the node's own addresses as destination.

The document replaces the table in one transaction: `add table` (so the delete
cannot fail the first time), `delete table`, then the new table. Conntrack
state lives outside the table, so established connections survive a replace.

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
    PortRange,
)

if TYPE_CHECKING:  # annotations only: the compiler is the heavier half of the policy code
    from meshctl.policy.compile import FilterRule, PacketFilter

FAMILY: Final = "inet"
TABLE: Final = "meshctl"
CHAIN: Final = "mesh-in"
BASE_CHAINS: Final = ("input", "forward")
PRIORITY_FILTER: Final = 0
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
    verdict: str  # "accept", "drop" or "jump:<chain>"
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


def _addr_match(family: str, field: str, items: Sequence[Prefix | IPAddress]) -> _Match:
    right, text = _values(_address_elems(items))
    return _eq({"payload": {"protocol": family, "field": field}}, right, f"{family} {field} {text}")


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


def _chain_rules(pf: PacketFilter) -> list[_Rule]:
    ct: Json = {"ct": {"key": "state"}}
    rules = [
        _Rule((_eq(ct, ["established", "related"], "ct state established,related", "in"),), "accept"),
        _Rule((_eq(ct, "invalid", "ct state invalid", "in"),), "drop"),
        _Rule((_icmp_type("ip6", ND_TYPES),), "accept", "neighbour discovery"),
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


def _verdict_json(verdict: str) -> Json:
    if verdict.startswith("jump:"):
        return {"jump": {"target": verdict[5:]}}
    return {verdict: None}


def _verdict_text(verdict: str) -> str:
    return verdict.replace(":", " ", 1)


def _table() -> dict[str, Json]:
    return {"family": FAMILY, "name": TABLE}


def _rules_of(pf: PacketFilter, interface: str) -> list[tuple[str, _Rule]]:
    jump = _Rule((_eq({"meta": {"key": "iifname"}}, interface, f'iifname "{interface}"'),), f"jump:{CHAIN}")
    return [(chain, jump) for chain in BASE_CHAINS] + [(CHAIN, r) for r in _chain_rules(pf)]


def _rule_json(chain: str, rule: _Rule) -> dict[str, Json]:
    body: dict[str, Json] = {"family": FAMILY, "table": TABLE, "chain": chain}
    body["expr"] = [m.json for m in rule.matches] + [_verdict_json(rule.verdict)]
    if rule.comment:
        body["comment"] = rule.comment
    return body


def _chains() -> list[dict[str, Json]]:
    base: list[dict[str, Json]] = [
        {
            "family": FAMILY,
            "table": TABLE,
            "name": hook,
            "type": "filter",
            "hook": hook,
            "prio": PRIORITY_FILTER,
            "policy": "accept",
        }
        for hook in BASE_CHAINS
    ]
    return [*base, {"family": FAMILY, "table": TABLE, "name": CHAIN}]


def table_objects(pf: PacketFilter, interface: str) -> list[dict[str, Json]]:
    """The table, its chains and rules as nft JSON objects (`{"chain": {...}}`, ...)."""
    objects: list[dict[str, Json]] = [{"table": _table()}]
    objects += [{"chain": c} for c in _chains()]
    objects += [{"rule": _rule_json(chain, rule)} for chain, rule in _rules_of(pf, interface)]
    return objects


def replace_document(pf: PacketFilter, interface: str) -> dict[str, Json]:
    """One `nft -j -f -` transaction that replaces table inet meshctl with `pf`."""
    commands: list[Json] = [
        {"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
        {"add": {"table": _table()}},  # so that the delete cannot fail on the first run
        {"delete": {"table": _table()}},
    ]
    commands += [{"add": obj} for obj in table_objects(pf, interface)]
    return {"nftables": commands}


def delete_document() -> dict[str, Json]:
    """Remove meshctl's table (and nothing else); a no-op if it does not exist."""
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
            {"add": {"table": _table()}},
            {"delete": {"table": _table()}},
        ]
    }


def render_text(pf: PacketFilter, interface: str) -> str:
    """The same ruleset as an nft script (for `--dry-run`, logs and golden tests)."""
    by_chain: dict[str, list[_Rule]] = {}
    for chain, rule in _rules_of(pf, interface):
        by_chain.setdefault(chain, []).append(rule)
    lines = [f"table {FAMILY} {TABLE} {{"]
    for chain in (*BASE_CHAINS, CHAIN):
        lines.append(f"\tchain {chain} {{")
        if chain in BASE_CHAINS:
            lines.append(f"\t\ttype filter hook {chain} priority filter; policy accept;")
        for rule in by_chain.get(chain, []):
            parts = [m.text for m in rule.matches] + [_verdict_text(rule.verdict)]
            if rule.comment:
                parts.append(f'comment "{rule.comment}"')
            lines.append("\t\t" + " ".join(parts))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def listed_objects(listing: Json) -> list[dict[str, Json]]:
    """`nft -j list table` output -> objects comparable with table_objects() (no handles)."""
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
            body = {k: v for k, v in body.items() if k != "handle"}
        out.append({kind: body})
    return out
