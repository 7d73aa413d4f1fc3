"""PacketFilter -> the nftables tables that enforce it, as nft JSON and text (pure).

The rules are ruleset.py's; this module puts them into meshctl's own tables, in one of two
layouts:

DEVICE (Linux 5.16 and newer), the default: the mesh filter hooks the mesh interface itself,
so no other packet of the host passes those rules (an inet hook costs every packet of the
host about 0.3 us here: 12 % of a small-packet flood that has nothing to do with the mesh,
and half of the filter's cost to a WireGuard flow, whose encrypted packets pass it too); the
strong host model, which must see every interface, is one short inet chain::

    table netdev meshctl {
        set udp4-replies, udp6-replies   # (peer, peer port, own address, own port), 2 min
        chain ingress { type filter hook ingress device IF priority -150; policy accept;
                        ruleset.inbound_rules (connection packets, then non-IP accept, ...) }
        chain egress  { type filter hook egress device IF priority filter; policy accept;
                        ruleset.outbound_rules (non-UDP accept first) }
    }
    table inet meshctl {
        chain strong-host { type filter hook prerouting priority -500; policy accept;
                            ruleset.strong_host_rules (the mesh interface and loopback accepted
                            first; elsewhere mesh destinations and mesh sources dropped) }
    }

On a subnet router or exit node (a RouterSettings given, firewall/routed.py) the filter table
also holds chain `routed` (the policy for routed traffic, jumped to from the inbound chain), and
table inet meshctl chains `routed-forward` (hook forward: MSS clamping, and forwarding for the
mesh only when meshctl turned it on) and `routed-snat` (hook postrouting, type nat: masquerade).

HOOKS (kernels without the netdev egress hook): the same rules behind inet hooks that
every packet passes, with the interface matched by name, in one table::

    table inet meshctl {
        set udp4-replies, udp6-replies
        chain strong-host { type filter hook prerouting priority -500; ruleset.strong_host_rules }
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

A replace keeps the reply sets' elements when the tables' layout is unchanged: the
transaction flushes the tables' rules and adds the new ones (`flush table` leaves set
elements alone). Otherwise (the first time, a changed layout, an older meshctl's table) it
deletes both of meshctl's tables (`add` first, so the delete cannot fail) and builds the new
one. Either way it is one kernel transaction.

Built by hand, not with pyroute2's nftables code, which mis-encodes prefixes such as /10.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Final

from meshctl.firewall import routed
from meshctl.firewall.routed import RouterSettings
from meshctl.firewall.ruleset import (
    REPLY_SETS,
    ROUTED_CHAIN,
    Json,  # re-exported: the JSON type of every nft object here
    Rule,
    eq,
    inbound_rules,
    l4proto,
    outbound_rules,
    strong_host_rules,
)
from meshctl.policy.protocols import PROTO_UDP

if TYPE_CHECKING:
    from meshctl.policy.compile import PacketFilter

TABLE: Final = "meshctl"
CHAIN: Final = "mesh-in"
CHAIN_OUT: Final = "mesh-out"
CHAIN_STRONG_HOST: Final = "strong-host"
# The names nft uses for priorities, per family (netdev knows only "filter").
PRIORITY_NAMES: Final = {"inet": {-150: "mangle", 0: "filter", 100: "srcnat"}, "netdev": {0: "filter"}}
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

__all__ = ["FAMILIES", "TABLE", "Json", "Layout", "RouterSettings", "delete_document", "listed_objects",
           "probe_document", "render_text", "replace_document", "table_objects"]


@dataclass(frozen=True, slots=True)
class _Chain:
    """One chain of meshctl's tables: a base chain on a hook, or a regular one reached by jump."""

    family: str
    name: str
    hook: str | None = None
    priority: int = 0
    kind: str = "filter"

    def listed(self, interface: str | None) -> dict[str, Json]:
        """As nft lists it (interface None), or as it is added (a device-bound chain names it)."""
        chain: dict[str, Json] = {"family": self.family, "table": TABLE, "name": self.name}
        if self.hook is not None:
            chain |= {"type": self.kind, "hook": self.hook, "prio": self.priority, "policy": "accept"}
            if self.family == Layout.DEVICE.family and interface is not None:
                chain["dev"] = interface  # nft 1.0.6 does not list it back
        return chain


# Before everything else on the host (raw -300, conntrack -200, other tables' mangle and filter):
# a packet for the mesh's addresses from elsewhere is gone before anything keeps state about it.
STRONG_HOST: Final = _Chain(Layout.HOOKS.family, CHAIN_STRONG_HOST, "prerouting", -500)


def _filter_chains(layout: Layout) -> tuple[_Chain, ...]:
    """The node's own filter, and the strong host model (always in table inet: it must see every
    interface)."""
    family = layout.family
    if layout is Layout.DEVICE:
        return _Chain(family, "ingress", "ingress", -150), _Chain(family, "egress", "egress", 0), STRONG_HOST
    # mangle (-150) runs before destination NAT undoes a masquerade; 300 after source NAT.
    return (STRONG_HOST, _Chain(family, "prerouting", "prerouting", -150),
            _Chain(family, "postrouting", "postrouting", 300), _Chain(family, CHAIN_OUT), _Chain(family, CHAIN))


def _router_chains(layout: Layout, pf: PacketFilter, router: RouterSettings | None) -> list[_Chain]:
    """A router's chains: the routed policy beside the filter, forwarding and NAT in table inet."""
    if router is None or not routed.carries_routes(pf):
        return []
    inet = Layout.HOOKS.family
    chains = [_Chain(layout.family, ROUTED_CHAIN), _Chain(inet, routed.FORWARD_CHAIN, "forward", -150)]
    if routed.needs_snat(pf, router):
        chains.append(_Chain(inet, routed.SNAT_CHAIN, "postrouting", 100, "nat"))
    return chains


def _chains(pf: PacketFilter, layout: Layout, router: RouterSettings | None) -> list[_Chain]:
    """Every chain, tables in FAMILIES order (as read_table lists them), in creation order."""
    chains = [*_filter_chains(layout), *_router_chains(layout, pf, router)]
    return [c for family in FAMILIES for c in chains if c.family == family]


def _families(chains: list[_Chain]) -> list[str]:
    return [f for f in FAMILIES if any(c.family == f for c in chains)]


def _rules_of(pf: PacketFilter, interface: str, layout: Layout,
              router: RouterSettings | None) -> dict[tuple[str, str], list[Rule]]:
    """(family, chain) -> its rules."""
    family = layout.family
    routing = router is not None and routed.carries_routes(pf)
    out: dict[tuple[str, str], list[Rule]] = {(STRONG_HOST.family, STRONG_HOST.name): strong_host_rules(pf, interface)}
    if layout is Layout.DEVICE:
        out[(family, "ingress")] = inbound_rules(pf, netdev=True, routed=routing)
        out[(family, "egress")] = outbound_rules(netdev=True)
    else:
        jumps = [("prerouting", "iifname", CHAIN), ("postrouting", "oifname", CHAIN_OUT)]
        for base, key, target in jumps:
            matches = (eq({"meta": {"key": key}}, interface, f'{key} "{interface}"'),
                       *((l4proto([PROTO_UDP]),) if target == CHAIN_OUT else ()))  # only UDP is recorded
            out[(family, base)] = [Rule(matches, f"jump:{target}")]
        out[(family, CHAIN_OUT)] = outbound_rules(netdev=False)
        out[(family, CHAIN)] = inbound_rules(pf, netdev=False, routed=routing)
    if router is not None and routing:
        inet = Layout.HOOKS.family
        out[(family, ROUTED_CHAIN)] = routed.routed_rules(pf)
        out[(inet, routed.FORWARD_CHAIN)] = routed.forward_rules(interface, router)
        if routed.needs_snat(pf, router):
            out[(inet, routed.SNAT_CHAIN)] = routed.snat_rules(interface, router)
    return out


def _verdict_json(verdict: str) -> list[Json]:
    if not verdict:  # a statement-only rule (the reply sets' updates, the MSS clamp)
        return []
    if verdict.startswith("jump:"):
        return [{"jump": {"target": verdict[5:]}}]
    return [{verdict: None}]


def _verdict_text(verdict: str) -> list[str]:
    return [verdict.replace(":", " ", 1)] if verdict else []


def _table(family: str) -> dict[str, Json]:
    return {"family": family, "name": TABLE}


def _rule_json(family: str, chain: str, rule: Rule) -> dict[str, Json]:
    body: dict[str, Json] = {"family": family, "table": TABLE, "chain": chain}
    body["expr"] = [m.json for m in rule.matches] + _verdict_json(rule.verdict)
    if rule.comment:
        body["comment"] = rule.comment
    return body


def _sets(family: str) -> list[dict[str, Json]]:
    return [
        {
            "family": family,
            "name": name,
            "table": TABLE,
            "type": [f"ipv{version}_addr", "inet_service", f"ipv{version}_addr", "inet_service"],
            "size": REPLY_SET_SIZE,
            "flags": ["timeout"],  # nft adds "dynamic" itself, and lists only this
            "timeout": REPLY_TIMEOUT_S,
        }
        for version, name in REPLY_SETS.items()
    ]


def _skeleton(pf: PacketFilter, layout: Layout, router: RouterSettings | None,
              interface: str | None = None) -> list[dict[str, Json]]:
    """The tables, their sets and chains: everything but the rules, table by table."""
    chains = _chains(pf, layout, router)
    objects: list[dict[str, Json]] = []
    for family in _families(chains):
        objects.append({"table": _table(family)})
        objects += [{"set": s} for s in (_sets(family) if family == layout.family else [])]
        objects += [{"chain": c.listed(interface)} for c in chains if c.family == family]
    return objects


def _ordered_rules(pf: PacketFilter, interface: str, layout: Layout,
                   router: RouterSettings | None) -> list[tuple[str, str, Rule]]:
    """(family, chain, rule) in the order nft lists them: table by table, chain by chain."""
    rules = _rules_of(pf, interface, layout, router)
    return [(c.family, c.name, r) for c in _chains(pf, layout, router) for r in rules.get((c.family, c.name), [])]


def table_objects(pf: PacketFilter, interface: str, layout: Layout = Layout.DEVICE,
                  router: RouterSettings | None = None) -> list[dict[str, Json]]:
    """The tables, their sets, chains and rules as nft lists them (`{"chain": {...}}`, ...)."""
    objects: list[dict[str, Json]] = []
    rules = _ordered_rules(pf, interface, layout, router)
    skeleton = _skeleton(pf, layout, router)
    for family in _families(_chains(pf, layout, router)):
        objects += [o for o in skeleton if _family_of(o) == family]
        objects += [{"rule": _rule_json(f, chain, rule)} for f, chain, rule in rules if f == family]
    return objects


def _family_of(obj: dict[str, Json]) -> Json:
    body = next(iter(obj.values()))
    assert isinstance(body, dict)
    return body.get("family")


def replace_document(pf: PacketFilter, interface: str, current: list[dict[str, Json]] | None = None,
                     layout: Layout = Layout.DEVICE, router: RouterSettings | None = None) -> dict[str, Json]:
    """One `nft -j -f -` transaction that makes meshctl's tables enforce `pf` on `interface`.

    `current` is what meshctl's tables hold now (listed_objects of both). When they are this
    layout's tables with the sets and chains wanted, only the rules are replaced and the UDP
    flows recorded so far stay.
    """
    rules: list[Json] = [{"add": {"rule": _rule_json(family, chain, rule)}}
                         for family, chain, rule in _ordered_rules(pf, interface, layout, router)]
    head: list[Json] = [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}]
    skeleton = _skeleton(pf, layout, router)
    if current is not None and [o for o in current if "rule" not in o] == skeleton:
        flushes: list[Json] = []
        for family in _families(_chains(pf, layout, router)):
            flushes += [{"add": {"table": _table(family)}}, {"flush": {"table": _table(family)}}]
        return {"nftables": [*head, *flushes, *rules]}
    commands = head + _delete_commands()
    commands += [{"add": obj} for obj in _skeleton(pf, layout, router, interface)]
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


def render_text(pf: PacketFilter, interface: str, layout: Layout = Layout.DEVICE,
                router: RouterSettings | None = None) -> str:
    """The same ruleset as an nft script (for `--dry-run`, logs and golden tests)."""
    rules = _rules_of(pf, interface, layout, router)
    chains = _chains(pf, layout, router)
    lines: list[str] = []
    for family in _families(chains):
        lines.append(f"table {family} {TABLE} {{")
        for s in (_sets(family) if family == layout.family else []):
            types = " . ".join(str(t) for t in s["type"])  # type: ignore[union-attr]
            lines += [f"\tset {s['name']} {{", f"\t\ttype {types}", f"\t\tsize {s['size']}",
                      "\t\tflags dynamic,timeout", f"\t\ttimeout {REPLY_TIMEOUT_S}s", "\t}"]
        for chain in (c for c in chains if c.family == family):
            lines.append(f"\tchain {chain.name} {{")
            if chain.hook is not None:
                device = f' device "{interface}"' if family == Layout.DEVICE.family else ""
                lines.append(f"\t\ttype {chain.kind} hook {chain.hook}{device} priority "
                             f"{_priority_text(family, chain.priority)}; policy accept;")
            for rule in rules.get((family, chain.name), []):
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
