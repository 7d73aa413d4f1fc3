"""The nft rules of a subnet router or exit node: the policy for routed traffic, MSS clamping and
source NAT (pure). nft.py puts them into meshctl's tables.

Routed traffic is what arrives on the mesh interface for a route this node carries (its approved
subnet routes; everything outside the mesh for an approved exit node). The inbound chain sends it
to ROUTED_CHAIN (ruleset._to_routes), which is stateless like the node's own filter, for the same
reason (any `ct` expression would track the tunnel's own UDP too) and in the same order:

    TCP, not a bare SYN                          accept   (the SYN was checked)
    a later fragment                             accept
    UDP answering a flow sent into the mesh      accept   (the reply sets the egress chain fills)
    ICMP echo replies and errors                 accept
    ICMP echo from a source allowed anything there          accept
    one rule per (rule, destination, family) of the ForwardFilter, commented "acls[i] line L"
    anything else                                drop     (default deny)

The router's own LAN address inside a carried route is decided there too: the packet never
reaches a forward hook, and the route's rules are what the policy says about it.

In the inet table (hook forward, priority mangle), FORWARD_CHAIN clamps the MSS of TCP SYNs
entering or leaving the tunnel to what fits the tunnel's MTU (a LAN host would otherwise offer
1460 and depend on ICMP "fragmentation needed" getting back), and, when meshctl turned IP
forwarding on itself, drops forwarding between the host's other interfaces: enabling routing for
the mesh does not make the host a router for anything else.

SNAT_CHAIN (hook postrouting, priority srcnat) masquerades mesh sources leaving for a carried
route, so LAN hosts answer without a route back to the mesh. This is the one place meshctl uses
connection tracking, on routers only: NAT keeps its mappings in conntrack. With
`--snat-subnet-routes=false` subnet routes keep the members' addresses (the LAN needs a route to
the mesh through this node); exit-node traffic is always masqueraded (the internet has no route
back to the mesh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from meshctl.firewall.ruleset import (
    Json,
    Match,
    Rule,
    addr_match,
    eq,
    family_of,
    icmp_type,
    not_a_bare_syn,
    payload,
    policy_rules,
    replies_and_fragments,
    source_match,
)
from meshctl.router.config import DEFAULT_MTU, Prefix

if TYPE_CHECKING:
    from meshctl.policy.compile import PacketFilter

FORWARD_CHAIN: Final = "routed-forward"
SNAT_CHAIN: Final = "routed-snat"
IP_HEADERS: Final = {4: 20 + 20, 6: 40 + 20}  # IP + TCP header bytes an MSS leaves out
NFPROTO: Final = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """What the router's rules need beyond the policy."""

    mesh_prefixes: tuple[Prefix, ...]  # the sources to masquerade
    subnet_routes: tuple[Prefix, ...] = ()  # this node's approved subnet routes
    exit_node: bool = False  # this node is an approved exit node
    snat_subnet_routes: bool = True
    mtu: int = DEFAULT_MTU  # the tunnel's: the MSS clamp follows it
    forwarding_owned: bool = False  # meshctl turned IP forwarding on (router/forwarding.py)


def carries_routes(pf: PacketFilter) -> bool:
    return bool(pf.forward.routes)


def routed_rules(pf: PacketFilter) -> list[Rule]:
    """ROUTED_CHAIN: the policy for traffic to the routes this node carries (module docstring)."""
    rules = [Rule((not_a_bare_syn(),), "accept", "part of a connection: only a bare SYN opens one"),
             *replies_and_fragments()]
    echo: dict[str, Rule] = {}  # one per (sources, destinations): a rule's several ports share it
    for rule in pf.forward.rules:
        for version in (4, 6):
            family = family_of(version)
            sources = [p for p in rule.sources if p.version == version]
            dests = [d for d in rule.destinations if d.version == version]
            if sources and dests:
                matches = (*source_match(family, sources), addr_match(family, "daddr", dests),
                           icmp_type(family, ["echo-request"]))
                echo.setdefault(" ".join(m.text for m in matches), Rule(matches, "accept", "echo"))
    rules += echo.values()
    for rule in pf.forward.rules:
        rules.extend(policy_rules(rule))
    rules.append(Rule((), "drop", "routed: default deny"))
    return rules


def _interface(key: str, interface: str, op: str = "==") -> Match:
    shown = f"{key} != \"{interface}\"" if op == "!=" else f"{key} \"{interface}\""
    return eq({"meta": {"key": key}}, interface, shown, op)


def _maxseg() -> Json:
    return {"tcp option": {"name": "maxseg", "field": "size"}}


def _clamp(version: int, mss: int) -> tuple[Match, ...]:
    syn = eq({"&": [payload("tcp", "flags"), ["syn", "rst"]]}, "syn", "tcp flags syn / syn,rst")
    nfproto = eq({"meta": {"key": "nfproto"}}, NFPROTO[version], f"meta nfproto {NFPROTO[version]}")
    bigger = eq(_maxseg(), mss, f"tcp option maxseg size > {mss}", ">")
    set_it = Match({"mangle": {"key": _maxseg(), "value": mss}}, f"tcp option maxseg size set {mss}")
    return syn, nfproto, bigger, set_it


def forward_rules(interface: str, settings: RouterSettings) -> list[Rule]:
    """FORWARD_CHAIN: MSS clamping both ways through the tunnel; forwarding for the mesh only."""
    rules = []
    for version in (4, 6):
        mss = settings.mtu - IP_HEADERS[version]
        for key in ("iifname", "oifname"):
            rules.append(Rule((_interface(key, interface), *_clamp(version, mss)), "",
                              "MSS clamped to the tunnel's MTU"))
    if settings.forwarding_owned:
        rules.append(Rule((_interface("iifname", interface, "!="), _interface("oifname", interface, "!=")), "drop",
                          "meshctl turned forwarding on for the mesh only"))
    return rules


def needs_snat(pf: PacketFilter, settings: RouterSettings) -> bool:
    return carries_routes(pf) and (settings.exit_node or settings.snat_subnet_routes)


def snat_rules(interface: str, settings: RouterSettings) -> list[Rule]:
    """SNAT_CHAIN: masquerade mesh sources leaving the tunnel for a carried route (subnet routes
    keep the members' addresses when snat_subnet_routes is off)."""
    head = (_interface("iifname", interface), _interface("oifname", interface, "!="))
    rules = []
    if not settings.snat_subnet_routes:
        for version in (4, 6):
            kept = [p for p in settings.subnet_routes if p.version == version]
            if kept:
                rules.append(Rule((*head, addr_match(family_of(version), "daddr", kept)), "return",
                                  "--snat-subnet-routes=false: members' addresses kept"))
    for version in (4, 6):
        sources = [p for p in settings.mesh_prefixes if p.version == version]
        if sources:
            rules.append(Rule((*head, addr_match(family_of(version), "saddr", sources)), "masquerade",
                              "mesh sources into the routed networks"))
    return rules
