"""The client's routes through the mesh (issue 19, items 3 and 4), all pure: which peer carries
which route, meshctl's table and rules, the plan's order, and a sequence of states."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "policy"))

from policy_samples import make_netmap, make_peer  # noqa: E402

from meshctl.coord.netmap import NetMap  # noqa: E402
from meshctl.router.forwarding import ForwardingState, SetForwarding, plan_forwarding  # noqa: E402
from meshctl.router.policy_routing import (  # noqa: E402
    THROW,
    UNREACHABLE,
    AddRule,
    AddTableRoute,
    DelRule,
    DelTableRoute,
    HostFacts,
    PolicyRoutingConfig,
    ReplaceTableRoute,
    RoutePrefs,
    TableRoute,
    apply_policy_plan,
    plan_policy_routing,
    policy_config,
    select_routes,
)

N = ipaddress.ip_network
A = ipaddress.ip_address
LAN = N("192.168.50.0/24")
HOME = HostFacts(connected=(N("10.1.0.0/24"),), keep_local=(A("203.0.113.7"), A("10.1.0.53")))


def mesh(**over: object) -> NetMap:
    peers = [make_peer("client", 1), replace(make_peer("r1", 2), approved_routes=(LAN,)),
             replace(make_peer("r2", 3), approved_routes=(LAN,)),
             replace(make_peer("office", 4), approved_routes=(N("10.0.0.0/8"),)),
             replace(make_peer("ex", 5), exit_node=True), make_peer("plain", 6)]
    return make_netmap(peers, "", "client")


def table(sel: object) -> list[str]:
    return [r.describe("mesh0") for r in sel.table]  # type: ignore[attr-defined]


def test_nothing_is_installed_without_asking() -> None:
    sel = select_routes(mesh(), RoutePrefs(), {}, HOME)
    assert sel.via == {} and sel.table == () and sel.exit_node is None


def test_accept_routes_sends_each_prefix_to_one_router() -> None:
    sel = select_routes(mesh(), RoutePrefs(accept_routes=True), {}, HostFacts())
    assert sel.via == {"r1": (LAN,), "office": (N("10.0.0.0/8"),)}  # r1: first of the HA pair by name
    assert sel.primaries == {LAN: "r1"}
    assert table(sel) == ["ip route 10.0.0.0/8 dev mesh0 table 109 proto 109",
                          "ip route 192.168.50.0/24 dev mesh0 table 109 proto 109"]


def test_the_monitors_choice_picks_the_router_and_a_stale_one_falls_back() -> None:
    assert select_routes(mesh(), RoutePrefs(accept_routes=True), {LAN: "r2"}, HostFacts()).via["r2"] == (LAN,)
    fallback = select_routes(mesh(), RoutePrefs(accept_routes=True), {LAN: "ex"}, HostFacts())  # ex carries no LAN
    assert fallback.via["r1"] == (LAN,) and "ex" not in fallback.via


def test_a_route_onto_the_hosts_own_network_stays_off_and_inner_networks_are_thrown() -> None:
    facts = HostFacts(connected=(N("192.168.50.0/25"), N("10.1.0.0/24")))
    sel = select_routes(mesh(), RoutePrefs(accept_routes=True), {}, facts)
    assert sel.via["r1"] == (LAN,)  # 192.168.50.0/24 is not inside the host's /25: installed
    assert LAN in {r.prefix for r in sel.table}
    # the host's /25 inside the accepted /24 and its 10.1.0.0/24 inside 10/8 stay on the physical path
    assert {r.prefix for r in sel.table if r.kind == THROW} == {N("192.168.50.0/25"), N("10.1.0.0/24")}
    facts = HostFacts(connected=(N("192.168.0.0/16"),))
    sel = select_routes(mesh(), RoutePrefs(accept_routes=True), {}, facts)
    assert "r1" not in sel.via and LAN not in {r.prefix for r in sel.table}
    assert sel.notes == ("route 192.168.50.0/24 (r1, r2): not installed, this host is on 192.168.0.0/16",)


def test_exit_node_takes_the_default_routes_and_keeps_the_underlay_local() -> None:
    sel = select_routes(mesh(), RoutePrefs(exit_node="ex"), {}, HOME)
    assert sel.exit_node == "ex" and sel.via == {"ex": (N("0.0.0.0/0"), N("::/0"))} and sel.error is None
    assert table(sel) == [
        "ip route 0.0.0.0/0 dev mesh0 table 109 proto 109",
        "ip route throw 10.1.0.53/32 table 109 proto 109",  # a resolver on the host's LAN
        "ip route throw 203.0.113.7/32 table 109 proto 109",  # the git host, a relay, a STUN server
        "ip -6 route ::/0 dev mesh0 table 109 proto 109",
    ]


def test_exit_node_by_mesh_address() -> None:
    ex = mesh().peer("ex")
    assert ex is not None
    assert select_routes(mesh(), RoutePrefs(exit_node=str(ex.ipv4)), {}, HostFacts()).exit_node == "ex"


def test_lan_access_is_kept_only_when_asked() -> None:
    without = select_routes(mesh(), RoutePrefs(exit_node="ex"), {}, HOME)
    assert N("10.1.0.0/24") not in {r.prefix for r in without.table}
    with_lan = select_routes(mesh(), RoutePrefs(exit_node="ex", exit_node_allow_lan_access=True), {}, HOME)
    assert TableRoute(N("10.1.0.0/24"), THROW) in with_lan.table


@pytest.mark.parametrize(("wanted", "why"), [
    ("r1", "exit node r1 is not an approved exit node"),
    ("nobody", "exit node 'nobody' is not a member of the mesh"),
    ("client", "exit node 'client' is this node itself"),
])
def test_an_unusable_exit_node_blocks_instead_of_leaking(wanted: str, why: str) -> None:
    sel = select_routes(mesh(), RoutePrefs(exit_node=wanted), {}, HOME)
    assert sel.exit_node is None and sel.error is not None and sel.error.startswith(why)
    assert "traffic outside the mesh is blocked" in sel.error
    assert {r.kind for r in sel.table if r.prefix.prefixlen == 0} == {UNREACHABLE}
    assert TableRoute(N("203.0.113.7/32"), THROW) in sel.table  # the git host is still reached
    assert all(N("0.0.0.0/0") not in v for v in sel.via.values())


def test_unapproved_routes_are_never_used() -> None:
    nm = make_netmap([make_peer("client", 1), make_peer("r1", 2)], "", "client")  # advertises, not approved
    sel = select_routes(nm, RoutePrefs(accept_routes=True, exit_node=""), {}, HostFacts())
    assert sel.via == {} and sel.table == ()


def test_policy_rules_follow_the_families_in_the_table() -> None:
    v4_only = policy_config([TableRoute(LAN)], 51820)
    assert sorted(r.describe() for r in v4_only.rules) == [
        "ip -4 rule priority 5300 fwmark 0x6d0000/0xff0000 lookup main",
        "ip -4 rule priority 5310 ipproto udp sport 51820 lookup main",
        "ip -4 rule priority 5320 lookup 109",
    ]
    assert policy_config([], 51820) == PolicyRoutingConfig()
    both = policy_config(select_routes(mesh(), RoutePrefs(exit_node="ex"), {}, HOME).table, 41641)
    assert {r.version for r in both.rules} == {4, 6} and len(both.rules) == 6


def test_plan_adds_routes_before_rules_and_removes_rules_before_routes() -> None:
    want = policy_config([TableRoute(LAN)], 51820)
    plan = plan_policy_routing(PolicyRoutingConfig(), want)
    kinds = [type(op) for op in plan.ops]
    assert kinds == [AddTableRoute, AddRule, AddRule, AddRule]
    assert [op.rule.priority for op in plan.ops[1:]] == [5300, 5310, 5320]  # type: ignore[union-attr]
    back = plan_policy_routing(want, PolicyRoutingConfig())
    assert [type(op) for op in back.ops] == [DelRule, DelRule, DelRule, DelTableRoute]
    assert [op.rule.priority for op in back.ops[:3]] == [5320, 5310, 5300]  # type: ignore[union-attr]


def test_a_route_changing_kind_is_replaced_in_place() -> None:
    blocked = policy_config([TableRoute(N("0.0.0.0/0"), UNREACHABLE)], 51820)
    open_ = policy_config([TableRoute(N("0.0.0.0/0"))], 51820)
    plan = plan_policy_routing(blocked, open_)
    assert plan.ops == (ReplaceTableRoute(TableRoute(N("0.0.0.0/0"))),)


def test_states_in_sequence() -> None:
    """Like Tailscale's TestRouterStates: each desired state applied to the last one reached."""
    state = PolicyRoutingConfig()
    steps = [
        (RoutePrefs(accept_routes=True), 3 + 2),
        (RoutePrefs(accept_routes=True, exit_node="ex"), 6 + 2 + 2 + 1),
        (RoutePrefs(exit_node="nobody"), 6 + 2 + 1),
        (RoutePrefs(), 0),
    ]
    for prefs, size in steps:
        want = policy_config(select_routes(mesh(), prefs, {}, HostFacts(keep_local=(A("203.0.113.7"),))).table,
                             51820)
        state = apply_policy_plan(state, plan_policy_routing(state, want))
        assert state == want
        assert len(state.rules) + len(state.routes) == size, (prefs, state.render("mesh0"))
        assert plan_policy_routing(state, want).is_empty()


@pytest.mark.parametrize(("on", "owned", "wanted", "ops"), [
    (set(), set(), {4}, [SetForwarding(4, True)]),
    ({4}, set(), {4}, []),  # already on, not ours: left alone
    ({4, 6}, set(), set(), []),  # the host forwards by itself: never turned off by meshctl
    ({4, 6}, {4, 6}, set(), [SetForwarding(4, False), SetForwarding(6, False)]),
    ({4, 6}, {6}, {4}, [SetForwarding(6, False)]),
    (set(), set(), {4, 6}, [SetForwarding(4, True), SetForwarding(6, True)]),
])
def test_forwarding_plan(on: set[int], owned: set[int], wanted: set[int], ops: list[SetForwarding]) -> None:
    assert list(plan_forwarding(ForwardingState(frozenset(on), frozenset(owned)), frozenset(wanted))) == ops
