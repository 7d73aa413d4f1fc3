"""desired() with routes (issue 19): WireGuard allowed IPs follow the chosen router, a router
wants forwarding and its nft settings, an unapproved route reaches nothing."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "policy"))

from policy_samples import make_netmap, make_peer  # noqa: E402

from meshctl.agent.desired import Desired, desired  # noqa: E402
from meshctl.agent.inputs import Inputs  # noqa: E402
from meshctl.agent.prefs import Prefs  # noqa: E402
from meshctl.coord.netmap import NetMap  # noqa: E402
from meshctl.keys import NodePrivate  # noqa: E402
from meshctl.router.policy_routing import HostFacts, RoutePrefs  # noqa: E402

N = ipaddress.ip_network
LAN = N("192.168.50.0/24")
GRANT_ALL = '{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}]}'


def netmap(self_name: str) -> NetMap:
    return make_netmap([make_peer("client", 1), replace(make_peer("r1", 2), approved_routes=(LAN,)),
                        replace(make_peer("r2", 3), approved_routes=(LAN,)),
                        replace(make_peer("ex", 4), exit_node=True), make_peer("quiet", 5)], GRANT_ALL, self_name)


def compute_desired(nm: NetMap, key: NodePrivate, port: int, endpoints: dict[str, str | None], *,
                    route_prefs: RoutePrefs | None = None, primaries: dict[ipaddress.IPv4Network, str] | None = None,
                    host: HostFacts | None = None, snat_subnet_routes: bool = True) -> Desired:
    """The pass's pure step, given the inputs a pass would load."""
    return desired(Inputs(nm, key, port, endpoints, route_prefs=route_prefs or RoutePrefs(),
                          primaries=dict(primaries or {}), host=host or HostFacts(),
                          snat_subnet_routes=snat_subnet_routes))


def allowed(nm: NetMap, prefs: RoutePrefs, primaries: dict[ipaddress.IPv4Network, str] | None = None
            ) -> dict[str, list[str]]:
    d = compute_desired(nm, NodePrivate.generate(), 51820, {}, route_prefs=prefs, primaries=primaries,
                        host=HostFacts())
    names = {p.wg_public_key: p.name for p in nm.peers}
    return {names[p.public_key]: [str(a) for a in p.allowed_ips if a.prefixlen not in (32, 128)] for p in d.wg.peers}


def test_without_accept_routes_no_peer_carries_a_route() -> None:
    assert all(v == [] for v in allowed(netmap("client"), RoutePrefs()).values())


def test_accept_routes_gives_the_prefix_to_the_primary_only() -> None:
    got = allowed(netmap("client"), RoutePrefs(accept_routes=True))
    assert got["r1"] == ["192.168.50.0/24"] and got["r2"] == []
    moved = allowed(netmap("client"), RoutePrefs(accept_routes=True), {LAN: "r2"})
    assert moved["r1"] == [] and moved["r2"] == ["192.168.50.0/24"]


def test_exit_node_takes_both_default_routes() -> None:
    got = allowed(netmap("client"), RoutePrefs(exit_node="ex"))
    assert got["ex"] == ["0.0.0.0/0", "::/0"] and got["r1"] == []


def test_a_router_wants_forwarding_and_its_nft_settings() -> None:
    d = compute_desired(netmap("r1"), NodePrivate.generate(), 51820, {}, snat_subnet_routes=False)
    assert d.forwarding == {4}
    assert d.router_settings is not None and d.router_settings.subnet_routes == (LAN,)
    assert not d.router_settings.snat_subnet_routes and not d.router_settings.exit_node
    assert d.packet_filter is not None and d.packet_filter.forward.routes == (LAN,)
    ex = compute_desired(netmap("ex"), NodePrivate.generate(), 51820, {})
    assert ex.forwarding == {4, 6} and ex.router_settings is not None and ex.router_settings.exit_node
    plain = compute_desired(netmap("quiet"), NodePrivate.generate(), 51820, {})
    assert plain.forwarding == frozenset() and plain.router_settings is None


def test_prefs_digest_changes_with_every_choice() -> None:
    base = Prefs()
    variants = [replace(base, accept_routes=True), replace(base, exit_node="ex"),
                replace(base, exit_node_allow_lan_access=True), replace(base, snat_subnet_routes=False)]
    assert len({base.digest_text(), *(v.digest_text() for v in variants)}) == 5
