"""Route rules as pure functions (issue 19, item 1 and 4): what a route may be, which routes of a
state conflict, what a node uses, and which router of an HA group is primary."""

from __future__ import annotations

import ipaddress

import pytest

from meshctl.coord import routes
from meshctl.coord.routes import Liveness, choose_primary, effective_routes, route_problems

N = ipaddress.ip_network
MESH = (N("100.64.0.0/10"), N("fd7a:115c:a1e0::/48"))
ALIVE, DEAD, UNKNOWN = Liveness.ALIVE, Liveness.DEAD, Liveness.UNKNOWN


@pytest.mark.parametrize(("text", "error"), [
    ("192.168.1.0/24", None),
    ("10.0.0.0/8", None),
    ("2001:db8::/32", None),
    ("0.0.0.0/0", None),
    ("192.168.1.7/24", "host bits set; the network is 192.168.1.0/24"),
    ("2001:DB8::/32", "not written canonically; write 2001:db8::/32"),
    ("2001:db8:0::/32", "not written canonically"),
    ("192.168.1.0", "missing /LENGTH"),
    ("192.168.1.0/33", "is not a CIDR"),
    ("office", "missing /LENGTH"),
    ("10.0.0.0/08", "not written canonically"),
])
def test_parse_route_wants_canonical_networks(text: str, error: str | None) -> None:
    if error is None:
        assert str(routes.parse_route(text)) == text
    else:
        with pytest.raises(ValueError, match=error):
            routes.parse_route(text)


@pytest.mark.parametrize(("route", "why"), [
    ("127.0.0.0/8", "loopback"),
    ("127.1.0.0/16", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("239.1.0.0/16", "multicast"),
    ("0.0.0.0/8", "'this network'"),
    ("255.255.255.255/32", "reserved"),
    ("fe80::/64", "link-local"),
    ("ff02::/16", "multicast"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("192.168.0.0/16", None),
    ("0.0.0.0/1", None),  # covers special space, but is not inside it: a real (if odd) route
    ("2001:db8::/32", None),
])
def test_special_use_space_is_no_route(route: str, why: str | None) -> None:
    assert routes.special_use(N(route)) == why if why is None else why in (routes.special_use(N(route)) or "")


@pytest.mark.parametrize(("approved", "relays", "problem"), [
    ({"r1": ["192.168.1.0/24"]}, {}, None),
    ({"r1": ["192.168.1.0/24"], "r2": ["192.168.1.0/24"]}, {}, None),  # an HA pair
    ({"r1": ["192.168.1.0/24"], "r2": ["192.168.1.0/24"], "r3": ["192.168.1.0/24"]}, {}, None),
    ({"r1": ["10.0.0.0/8", "10.1.0.0/16"]}, {}, None),  # one router's own nesting is harmless
    ({"r1": ["10.0.0.0/8"], "r2": ["10.1.0.0/16"]}, {}, "member r2: route 10.1.0.0/16 overlaps r1's route 10.0.0.0/8"),
    ({"r1": ["10.1.0.0/16"], "r2": ["10.0.0.0/8"]}, {}, "member r1: route 10.1.0.0/16 overlaps r2's route 10.0.0.0/8"),
    ({"r1": ["10.0.0.0/8"], "r2": ["10.0.0.0/8"], "r3": ["10.2.3.0/24"]}, {},
     "member r3: route 10.2.3.0/24 overlaps r2's route 10.0.0.0/8"),
    ({"a": ["2001:db8::/32"], "b": ["2001:db8:1::/48"]}, {}, "member b: route 2001:db8:1::/48 overlaps"),
    ({"r1": ["10.0.0.0/16"], "r2": ["10.1.0.0/16"]}, {}, None),  # neighbours, no overlap
    ({"r1": ["100.64.0.0/16"]}, {}, "member r1: route 100.64.0.0/16: overlaps the mesh's own addresses"),
    ({"r1": ["100.0.0.0/8"]}, {}, "overlaps the mesh's own addresses"),  # covers the whole mesh
    ({"r1": ["fd7a:115c:a1e0:1::/64"]}, {}, "overlaps the mesh's own addresses"),
    ({"r1": ["127.0.0.0/8"]}, {}, "member r1: route 127.0.0.0/8: loopback addresses are no network"),
    ({"r1": ["0.0.0.0/0", "::/0"]}, {}, None),  # an exit node
    ({"r1": ["0.0.0.0/0", "::/0"], "r2": ["0.0.0.0/0", "::/0"]}, {}, None),  # two exit nodes
    ({"r1": ["0.0.0.0/0"]}, {}, "member r1: routes: 0.0.0.0/0 and ::/0 are approved together"),
    ({"r1": ["203.0.113.0/24"]}, {"relay1": ["203.0.113.9"]}, "route 203.0.113.0/24: covers relay relay1's address"),
    ({"r1": ["0.0.0.0/0", "::/0"]}, {"relay1": ["203.0.113.9"]}, None),  # an exit node never takes the relay
])
def test_route_problems(approved: dict[str, list[str]], relays: dict[str, list[str]], problem: str | None) -> None:
    got = route_problems({m: [N(r) for r in rs] for m, rs in approved.items()}, MESH,
                         {r: [ipaddress.ip_address(a) for a in addrs] for r, addrs in relays.items()})
    if problem is None:
        assert got == []
    else:
        assert any(problem in line for line in got), got


def test_magicdns_address_is_protected_even_outside_the_mesh_prefix() -> None:
    mesh = (N("10.99.0.0/16"), N("fd00:1::/48"))
    assert route_problems({"r1": [N("100.100.0.0/16")]}, mesh) == [
        "member r1: route 100.100.0.0/16: overlaps the mesh's own addresses"]


def test_overlap_sweep_finds_every_conflict_in_a_large_state() -> None:
    """1,000 routers, disjoint /24s, plus one /8 from another member: each /24 inside it conflicts."""
    approved = {f"r{i}": [N(f"10.{i // 256}.{i % 256}.0/24")] for i in range(1000)}
    approved["big"] = [N("10.0.0.0/8")]
    assert len(route_problems(approved, MESH)) == 1000


@pytest.mark.parametrize(("advertised", "exit_adv", "approved", "want_routes", "want_exit"), [
    (["192.168.1.0/24"], False, ["192.168.1.0/24"], ["192.168.1.0/24"], False),
    (["192.168.1.0/24"], False, [], [], False),  # advertised, not approved
    ([], False, ["192.168.1.0/24"], [], False),  # approved, no longer advertised
    (["10.0.0.0/8", "192.168.1.0/24"], False, ["192.168.1.0/24"], ["192.168.1.0/24"], False),
    ([], True, ["0.0.0.0/0", "::/0"], [], True),
    ([], False, ["0.0.0.0/0", "::/0"], [], False),  # exit approved, not advertised
    ([], True, [], [], False),  # exit advertised, not approved
])
def test_a_route_needs_the_record_and_the_state(advertised: list[str], exit_adv: bool, approved: list[str],
                                                 want_routes: list[str], want_exit: bool) -> None:
    got = effective_routes([N(r) for r in advertised], exit_adv, [N(r) for r in approved])
    assert [str(r) for r in got.routes] == want_routes
    assert got.exit_node is want_exit


@pytest.mark.parametrize(("routers", "liveness", "current", "want"), [
    (["r1", "r2"], {}, None, "r1"),  # nothing known yet: the first by name, on every node
    (["r2", "r1"], {}, None, "r1"),
    (["r1", "r2"], {"r1": ALIVE, "r2": ALIVE}, None, "r1"),
    (["r1", "r2"], {"r1": DEAD, "r2": ALIVE}, "r1", "r2"),  # failover
    (["r1", "r2"], {"r1": ALIVE, "r2": ALIVE}, "r2", "r2"),  # r1 is back: no flap back
    (["r1", "r2"], {"r1": ALIVE, "r2": DEAD}, "r2", "r1"),  # back only when the second dies
    (["r1", "r2"], {"r1": DEAD, "r2": UNKNOWN}, "r1", "r2"),
    (["r1", "r2", "r3"], {"r1": DEAD, "r2": DEAD, "r3": ALIVE}, "r1", "r3"),
    (["r1", "r2"], {"r1": DEAD, "r2": DEAD}, "r2", "r2"),  # all dead: stay in the tunnel
    (["r1", "r2"], {"r1": DEAD, "r2": DEAD}, None, "r1"),
    (["r1", "r2"], {"r1": UNKNOWN, "r2": ALIVE}, "r1", "r1"),  # not known dead: stays
    (["r1", "r2"], {}, "gone", "r1"),  # the old primary left the group
    ([], {}, "r1", None),
])
def test_choose_primary(routers: list[str], liveness: dict[str, Liveness], current: str | None,
                        want: str | None) -> None:
    assert choose_primary(routers, liveness, current) == want


def test_ha_groups_name_every_carrier_in_order() -> None:
    groups = routes.ha_groups({"r2": [N("10.0.0.0/24")], "r1": [N("10.0.0.0/24"), N("10.1.0.0/24")]})
    assert groups == {N("10.0.0.0/24"): ("r1", "r2")}


@pytest.mark.parametrize(("advertised", "problem"), [
    (["192.168.1.0/24"], None),
    (["0.0.0.0/0"], "a default route is exit-node use"),
    (["100.64.1.0/24"], "overlaps the mesh's own addresses"),
    (["224.0.0.0/8"], "multicast addresses are no network"),
])
def test_what_a_device_may_advertise(advertised: list[str], problem: str | None) -> None:
    got = routes.advertised_problems([N(r) for r in advertised], MESH)
    assert (got == []) if problem is None else (problem in got[0])
