"""PacketFilter -> the nftables table that enforces it, as nft JSON and text (pure).

The rules are ruleset.py's; this module puts them into meshctl's own table, in one of two
layouts:

DEVICE (Linux 5.16 and newer), the default: hooks on the mesh interface itself, so no other
packet of the host ever passes meshctl's rules (an inet hook costs every packet of the host
about 0.3 us here: 12 % of a small-packet flood that has nothing to do with the mesh, and
half of the filter's cost to a WireGuard flow, whose encrypted packets pass it too)::

    table netdev meshctl {
        set udp4-replies, udp6-replies   # (peer, peer port, own address, own port), 2 min
        chain ingress { type filter hook ingress device IF priority -150; policy accept;
                        ruleset.inbound_rules (connection packets, then non-IP accept, ...) }
        chain egress  { type filter hook egress device IF priority filter; policy accept;
                        ruleset.outbound_rules (non-UDP accept first) }
    }

HOOKS (kernels without the netdev egress hook): the same rules behind inet hooks that
every packet passes, with the interface matched by name::

    table inet meshctl {
        set udp4-replies, udp6-replies
        chain prerouting  { type filter hook prerouting priority mangle; iifname IF jump mesh-in }
        chain postrouting { type filter hook postrouting priority 300; oifname IF udp jump mesh-out }
        chain mesh-out { ruleset.outbound_rules }
        chain mesh-in  { ruleset.inbound_rules }
    }

Both see what Tailscale's filter sees: ingress and prerouting (mangle) come before NAT undoes
a masquerade, so a reply to a masqueraded container arrives for the node's own address, and
egress and postrouting at 300 come after source NAT, so the flows are recorded as the peer
will answer them.

A device-bound chain goes with its device: Linux 6.1 removes it when the interface is deleted
(6.16 and newer keep it and attach it again by name). The reconciler reads the table back on
every pass and the interface comes up only after the filter is in place, so a recreated
interface gets its filter again before it carries anything.

A replace keeps the reply sets' elements when the table's layout is unchanged: the
transaction flushes the table's rules and adds the new ones (`flush table` leaves set
elements alone). Otherwise (the first time, a changed layout, an older meshctl's table) it
deletes both of meshctl's tables (`add` first, so the delete cannot fail) and builds the new
one. Either way it is one kernel transaction.

Built by hand, not with pyroute2's nftables code, which mis-encodes prefixes such as /10.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Final

from meshctl.firewall.ruleset import (
    REPLY_SETS,
    Json,  # re-exported: the JSON type of every nft object here
    Rule,
    eq,
    inbound_rules,
    l4proto,
    outbound_rules,
)
from meshctl.policy.protocols import PROTO_UDP

if TYPE_CHECKING:
    from meshctl.policy.compile import PacketFilter

TABLE: Final = "meshctl"
CHAIN: Final = "mesh-in"
CHAIN_OUT: Final = "mesh-out"
# The names nft uses for priorities, per family (netdev knows only "filter").
PRIORITY_NAMES: Final = {"inet": {-150: "mangle", 0: "filter"}, "netdev": {0: "filter"}}
REPLY_SET_SIZE: Final = 65535  # when full, new flows' replies are dropped (as with a full conntrack table)
REPLY_TIMEOUT_S: Final = 120  # conntrack's timeout for a UDP flow that has seen replies
JSON_SCHEMA_VERSION: Final = 1


class Layout(Enum):
    DEVICE = "netdev"  # the value is the table's family
    HOOKS = "inet"

    @property
    def family(self) -> str:
        return self.value


FAMILIES: Final = tuple(layout.family for layout in Layout)

__all__ = ["FAMILIES", "TABLE", "Json", "Layout", "delete_document", "listed_objects", "probe_document",
           "render_text", "replace_document", "table_objects"]


@dataclass(frozen=True, slots=True)
class _Base:
    """A base chain: its hook, priority, and how it reaches the rules."""

    name: str
    priority: int
    interface_match: str | None  # HOOKS: "iifname"/"oifname" then a jump; DEVICE: bound, no match
    target: str | None  # the chain the HOOKS base chain jumps to


def _bases(layout: Layout) -> tuple[_Base, _Base]:
    if layout is Layout.DEVICE:
        return _Base("ingress", -150, None, None), _Base("egress", 0, None, None)
    # mangle (-150) runs before destination NAT undoes a masquerade; 300 after source NAT.
    return _Base("prerouting", -150, "iifname", CHAIN), _Base("postrouting", 300, "oifname", CHAIN_OUT)


def _rules_of(pf: PacketFilter, interface: str, layout: Layout) -> list[tuple[str, Rule]]:
    inbound, outbound = _bases(layout)
    if layout is Layout.DEVICE:
        return ([(inbound.name, r) for r in inbound_rules(pf, netdev=True)]
                + [(outbound.name, r) for r in outbound_rules(netdev=True)])
    jumps = []
    for base in (inbound, outbound):
        assert base.interface_match is not None and base.target is not None
        matches = (eq({"meta": {"key": base.interface_match}}, interface, f'{base.interface_match} "{interface}"'),
                   *((l4proto([PROTO_UDP]),) if base.target == CHAIN_OUT else ()))  # only UDP is recorded
        jumps.append((base.name, Rule(matches, f"jump:{base.target}")))
    return [*jumps, *((CHAIN_OUT, r) for r in outbound_rules(netdev=False)),
            *((CHAIN, r) for r in inbound_rules(pf, netdev=False))]


def _verdict_json(verdict: str) -> list[Json]:
    if not verdict:  # a statement-only rule (the reply sets' updates)
        return []
    if verdict.startswith("jump:"):
        return [{"jump": {"target": verdict[5:]}}]
    return [{verdict: None}]


def _verdict_text(verdict: str) -> list[str]:
    return [verdict.replace(":", " ", 1)] if verdict else []


def _table(family: str) -> dict[str, Json]:
    return {"family": family, "name": TABLE}


def _rule_json(layout: Layout, chain: str, rule: Rule) -> dict[str, Json]:
    body: dict[str, Json] = {"family": layout.family, "table": TABLE, "chain": chain}
    body["expr"] = [m.json for m in rule.matches] + _verdict_json(rule.verdict)
    if rule.comment:
        body["comment"] = rule.comment
    return body


def _sets(layout: Layout) -> list[dict[str, Json]]:
    return [
        {
            "family": layout.family,
            "name": name,
            "table": TABLE,
            "type": [f"ipv{version}_addr", "inet_service", f"ipv{version}_addr", "inet_service"],
            "size": REPLY_SET_SIZE,
            "flags": ["timeout"],  # nft adds "dynamic" itself, and lists only this
            "timeout": REPLY_TIMEOUT_S,
        }
        for version, name in REPLY_SETS.items()
    ]


def _chains(layout: Layout, interface: str | None) -> list[dict[str, Json]]:
    """The chains as nft lists them (interface None), or as they are added (the device named)."""
    chains: list[dict[str, Json]] = []
    for base in _bases(layout):
        chain: dict[str, Json] = {"family": layout.family, "table": TABLE, "name": base.name, "type": "filter",
                                  "hook": base.name, "prio": base.priority, "policy": "accept"}
        if layout is Layout.DEVICE and interface is not None:
            chain["dev"] = interface  # nft 1.0.6 does not list it back
        chains.append(chain)
    if layout is Layout.HOOKS:
        chains += [{"family": layout.family, "table": TABLE, "name": name} for name in (CHAIN_OUT, CHAIN)]
    return chains


def _skeleton(layout: Layout, interface: str | None = None) -> list[dict[str, Json]]:
    """The table, its sets and chains: everything but the rules."""
    objects: list[dict[str, Json]] = [{"table": _table(layout.family)}]
    objects += [{"set": s} for s in _sets(layout)]
    objects += [{"chain": c} for c in _chains(layout, interface)]
    return objects


def table_objects(pf: PacketFilter, interface: str, layout: Layout = Layout.DEVICE) -> list[dict[str, Json]]:
    """The table, its sets, chains and rules as nft lists them (`{"chain": {...}}`, ...)."""
    return _skeleton(layout) + [{"rule": _rule_json(layout, chain, rule)}
                                for chain, rule in _rules_of(pf, interface, layout)]


def replace_document(pf: PacketFilter, interface: str, current: list[dict[str, Json]] | None = None,
                     layout: Layout = Layout.DEVICE) -> dict[str, Json]:
    """One `nft -j -f -` transaction that makes meshctl's table enforce `pf` on `interface`.

    `current` is what meshctl's tables hold now (listed_objects of both). When it is this
    layout's table with the sets and chains wanted, only the rules are replaced and the UDP
    flows recorded so far stay.
    """
    table = _table(layout.family)
    rules: list[Json] = [{"add": {"rule": _rule_json(layout, chain, rule)}}
                         for chain, rule in _rules_of(pf, interface, layout)]
    head: list[Json] = [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}]
    if current is not None and [o for o in current if "rule" not in o] == _skeleton(layout):
        return {"nftables": [*head, {"add": {"table": table}}, {"flush": {"table": table}}, *rules]}
    commands = head + _delete_commands()
    commands += [{"add": obj} for obj in _skeleton(layout, interface)]
    return {"nftables": commands + rules}


def _delete_commands() -> list[Json]:
    """Delete both of meshctl's tables; the add before each makes a missing one no error."""
    commands: list[Json] = []
    for family in FAMILIES:
        commands += [{"add": {"table": _table(family)}}, {"delete": {"table": _table(family)}}]
    return commands


def delete_document() -> dict[str, Json]:
    """Remove meshctl's tables (and nothing else); a no-op if there are none."""
    return {"nftables": [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}, *_delete_commands()]}


def probe_document(interface: str) -> dict[str, Json]:
    """For `nft -c`: can this kernel and nft bind a chain to the egress hook of `interface`?"""
    family, name = Layout.DEVICE.family, f"{TABLE}-probe"
    chain: dict[str, Json] = {"family": family, "table": name, "name": "egress", "type": "filter",
                              "hook": "egress", "dev": interface, "prio": 0, "policy": "accept"}
    return {"nftables": [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}},
                         {"add": {"table": {"family": family, "name": name}}}, {"add": {"chain": chain}}]}


def _priority_text(family: str, prio: int) -> str:
    return PRIORITY_NAMES[family].get(prio, str(prio))


def render_text(pf: PacketFilter, interface: str, layout: Layout = Layout.DEVICE) -> str:
    """The same ruleset as an nft script (for `--dry-run`, logs and golden tests)."""
    by_chain: dict[str, list[Rule]] = {}
    for chain, rule in _rules_of(pf, interface, layout):
        by_chain.setdefault(chain, []).append(rule)
    lines = [f"table {layout.family} {TABLE} {{"]
    for s in _sets(layout):
        types = " . ".join(str(t) for t in s["type"])  # type: ignore[union-attr]
        lines += [f"\tset {s['name']} {{", f"\t\ttype {types}", f"\t\tsize {s['size']}",
                  "\t\tflags dynamic,timeout", f"\t\ttimeout {REPLY_TIMEOUT_S}s", "\t}"]
    bases = {b.name: b for b in _bases(layout)}
    for chain in (*bases, *(() if layout is Layout.DEVICE else (CHAIN_OUT, CHAIN))):
        lines.append(f"\tchain {chain} {{")
        if chain in bases:
            device = f' device "{interface}"' if layout is Layout.DEVICE else ""
            priority = _priority_text(layout.family, bases[chain].priority)
            lines.append(f"\t\ttype filter hook {chain}{device} priority {priority}; policy accept;")
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
