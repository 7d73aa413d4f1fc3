"""Plans are data: each subsystem's plan compared for equality, and a pass's plan as a whole.

A pass reads every subsystem (agent/reconcile.py) and plans purely (agent/plan.py); these
tests feed the readings in directly. Applying a plan to a state and planning again must find
nothing to do: that is what makes the next pass after a good one a no-op, and what makes it
heal any drift (a reading that differs plans the repair).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from test_desired import NOW, inputs, netmap

from meshctl.agent.desired import KEEPALIVE_S, Desired, desired
from meshctl.agent.plan import Observed, Plan, plan, plan_endpoints
from meshctl.dns.os_plan import DnsAction, DnsPlan, DnsState, DnsWanted, plan_dns
from meshctl.dns.resolvconf import DnsMode
from meshctl.firewall import nft
from meshctl.firewall.plan import FilterPlan, FilterState, plan_filter
from meshctl.keys import NodePrivate
from meshctl.router.config import (
    DEFAULT_MTU,
    AddAddress,
    AddRoute,
    RouterPlan,
    RouterState,
    SetMtu,
    SetUp,
    apply_plan_to_state,
    plan_router,
)
from meshctl.wg.config import DeviceState, DeviceUpdate, PeerState, PeerUpdate, apply_update

IF = "mesh0"
NO_DNS = DnsState(DnsMode.RESOLV_CONF, False, None, False)


def empty_host() -> Observed:
    return Observed(DeviceState(), RouterState(), FilterState(None, nft.Layout.DEVICE), NO_DNS)


def test_a_fresh_host_gets_everything_and_nothing_else() -> None:
    key = NodePrivate.generate()
    want = desired(inputs(netmap(), {"b": "192.0.2.2:51820"}, key))
    p = plan(empty_host(), want, IF, NOW)
    assert p.wg.private_key == key and p.wg.listen_port == 51820
    assert {(u.public_key, u.new, u.endpoint) for u in p.wg.peers} == {
        (c.public_key, True, c.endpoint) for c in want.wg.peers}
    assert want.packet_filter is not None
    assert p.filter == FilterPlan(nft.replace_document(want.packet_filter, IF, None, nft.Layout.DEVICE),
                                  f"replace table netdev meshctl: {len(want.packet_filter.rules)} allow rules for a, "
                                  "default deny")
    assert p.router == RouterPlan((SetMtu(DEFAULT_MTU), AddAddress(ipaddress.ip_interface("100.64.0.1/32")),
                                   AddAddress(ipaddress.ip_interface("fd00::1/128")), SetUp(),
                                   AddRoute(ipaddress.ip_network("100.64.0.0/10")),
                                   AddRoute(ipaddress.ip_network("fd00::/48"))))
    assert p.dns == DnsPlan()


def applied(observed: Observed, p: Plan, want: Desired) -> Observed:
    """The host after a correct apply of `p` (what each backend promises; nft lists the table
    the document built)."""
    assert want.packet_filter is not None
    table = nft.table_objects(want.packet_filter, IF) if p.filter.document is not None else None
    dns = observed.dns
    if p.dns.action is DnsAction.SETUP and p.dns.wanted is not None:
        dns = DnsState(DnsMode.RESOLV_CONF, True, p.dns.wanted.domain, True)
    elif p.dns.action is DnsAction.RESTORE:
        dns = NO_DNS
    return Observed(apply_update(observed.wg, p.wg),
                    apply_plan_to_state(replace(observed.router, exists=True), p.router),
                    FilterState(table, nft.Layout.DEVICE), dns)


def test_after_a_plan_is_applied_the_next_plan_is_empty() -> None:
    want = desired(inputs(netmap(), {"b": "192.0.2.2:51820"}, serve_dns=True))
    host = applied(empty_host(), plan(empty_host(), want, IF, NOW), want)
    assert plan(host, want, IF, NOW) == Plan()
    assert plan(host, want, IF, NOW).is_empty()


def test_drift_is_planned_back_per_subsystem() -> None:
    """A route, an address, an nft rule, a peer's endpoint changed by hand: each planned back."""
    want = desired(inputs(netmap(), {"b": "192.0.2.2:51820"}, serve_dns=True))
    assert want.packet_filter is not None
    good = applied(empty_host(), plan(empty_host(), want, IF, NOW), want)
    route = ipaddress.ip_network("100.64.0.0/10")
    no_route = replace(good, router=replace(good.router, routes=tuple(r for r in good.router.routes if r != route)))
    assert plan(no_route, want, IF, NOW) == Plan(router=RouterPlan((AddRoute(route),)))
    table = good.filter.table  # type: ignore[union-attr]
    assert table is not None
    one_rule_less = [o for o in table if "rule" not in o] + [o for o in table if "rule" in o][1:]
    drifted = replace(good, filter=FilterState(one_rule_less, nft.Layout.DEVICE))
    assert plan(drifted, want, IF, NOW).filter == plan_filter(drifted.filter, want.packet_filter, IF)  # type: ignore[arg-type]
    assert not plan(drifted, want, IF, NOW).filter.is_empty()
    b = netmap().peer("b")
    assert b is not None
    roamed = replace(good, wg=replace(good.wg, peers=tuple(
        replace(p, endpoint="192.0.2.77:9") if p.endpoint == "192.0.2.2:51820" else p for p in good.wg.peers)))
    [update] = plan(roamed, want, IF, NOW).wg.peers
    assert update.endpoint == "192.0.2.2:51820" and not update.new
    foreign = replace(good, dns=DnsState(DnsMode.RESOLV_CONF, False, None, True))  # a DHCP client rewrote it
    assert want.dns is not None
    assert plan(foreign, want, IF, NOW) == Plan(dns=DnsPlan(DnsAction.SETUP, want.dns))


def test_the_filter_plan() -> None:
    want = desired(inputs(netmap(), {}))
    pf = want.packet_filter
    assert pf is not None
    device, hooks = nft.table_objects(pf, IF, nft.Layout.DEVICE), nft.table_objects(pf, IF, nft.Layout.HOOKS)
    assert plan_filter(FilterState(device, nft.Layout.DEVICE), pf, IF) == FilterPlan()
    assert plan_filter(FilterState(device, nft.Layout.HOOKS), pf, IF) == FilterPlan()  # the kernel took it
    assert plan_filter(FilterState(hooks, nft.Layout.HOOKS), pf, IF) == FilterPlan()
    assert plan_filter(FilterState(hooks, nft.Layout.DEVICE), pf, IF).document == nft.replace_document(
        pf, IF, hooks, nft.Layout.DEVICE)  # the device layout became possible: moved there
    assert plan_filter(FilterState(None, nft.Layout.DEVICE), None, IF) == FilterPlan()  # bad policy: keep the last


def test_the_router_plan_adds_first_and_touches_only_what_differs() -> None:
    want = desired(inputs(netmap(), {})).router
    have = RouterState(True, True, DEFAULT_MTU, want.addresses, want.routes[:1])
    assert plan_router(have, want) == RouterPlan((AddRoute(want.routes[1]),))
    assert plan_router(replace(have, routes=want.routes), want) == RouterPlan()


WANTED = DnsWanted("acme.mesh", ("64.100.in-addr.arpa",), ("100.100.100.100",))


def test_the_dns_plan() -> None:
    ours = DnsState(DnsMode.RESOLV_CONF, True, "acme.mesh", True)
    assert plan_dns(ours, WANTED) == DnsPlan()
    assert plan_dns(replace(ours, domain="old.mesh"), WANTED) == DnsPlan(DnsAction.SETUP, WANTED)  # renamed
    assert plan_dns(NO_DNS, WANTED) == DnsPlan(DnsAction.SETUP, WANTED)
    assert plan_dns(replace(ours, leftover=False), WANTED) == DnsPlan(DnsAction.SETUP, WANTED)  # backup lost
    # No MagicDNS here (no agent, or --no-accept-dns): what a crashed agent left is put back.
    assert plan_dns(ours, None) == DnsPlan(DnsAction.RESTORE)
    assert plan_dns(DnsState(DnsMode.RESOLVED, False, None, True), None) == DnsPlan(DnsAction.RESTORE)
    assert plan_dns(NO_DNS, None) == DnsPlan()
    assert DnsPlan(DnsAction.SETUP, WANTED).describe() == ["point the system resolver at MagicDNS for acme.mesh"]


def test_an_endpoint_update_between_passes_writes_only_what_the_device_lacks() -> None:
    a, b, c = (NodePrivate.generate().public() for _ in range(3))
    state = DeviceState(NodePrivate.generate(), 51820, (
        PeerState(a, "192.0.2.1:51820", (), KEEPALIVE_S),
        PeerState(b, "127.0.0.1:40001", (), KEEPALIVE_S),  # WireGuard roamed to the proxy
        PeerState(c, "192.0.2.3:51820", (), 0),
    ))
    wanted = {a.raw: ("192.0.2.1:51820", KEEPALIVE_S), b.raw: ("198.51.100.1:40002", KEEPALIVE_S),
              c.raw: ("192.0.2.3:51820", KEEPALIVE_S), NodePrivate.generate().public().raw: ("192.0.2.9:1", 25)}
    assert plan_endpoints(state, wanted) == DeviceUpdate(peers=tuple(sorted((
        PeerUpdate(b, update_only=True, endpoint="198.51.100.1:40002"),
        PeerUpdate(c, update_only=True, persistent_keepalive=KEEPALIVE_S),
    ), key=lambda u: u.public_key.raw)))
    assert plan_endpoints(state, {a.raw: ("192.0.2.1:51820", KEEPALIVE_S)}).is_empty()
