"""A subnet router's and an exit node's nft rules (issue 19, item 2): golden text, what changes
with the settings, and the real nft taking them and listing them back unchanged."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from firewall_lab import make_netmap, make_peer

from meshctl.firewall import apply
from meshctl.firewall.apply import apply_filter, read_table
from meshctl.firewall.nft import Layout, RouterSettings, render_text, table_objects
from meshctl.policy.compile import PacketFilter, compile_filter
from meshctl.policy.parse import parse_policy

GOLDEN = Path(__file__).with_name("golden")
N = ipaddress.ip_network
LAN = N("192.168.50.0/24")
MESH = (N("100.64.0.0/10"), N("fd7a:115c:a1e0::/48"))
POLICY = """{
  "grants": [
    {"src": ["dana@example.com"], "dst": ["192.168.50.0/24"], "ip": ["tcp:22"]},
    {"src": ["autogroup:member"], "dst": ["192.168.50.10"], "ip": ["tcp:80", "udp:53"]},
    {"src": ["oscar@example.com"], "dst": ["autogroup:internet"], "ip": ["*"]},
  ],
}"""


def router_filter(exit_node: bool = False) -> PacketFilter:
    peers = [replace(make_peer("r1", 1, ("tag:router",)), approved_routes=(LAN,), exit_node=exit_node),
             make_peer("dev-laptop", 2, (), "dana@example.com"), make_peer("ops-laptop", 3, (), "oscar@example.com")]
    netmap = make_netmap(peers, POLICY)
    return compile_filter(parse_policy(POLICY), netmap, "r1")


SUBNET = RouterSettings(MESH, (LAN,))


def test_subnet_router_text_matches_golden() -> None:
    assert render_text(router_filter(), "mesh0", router=SUBNET) == (GOLDEN / "router.nft").read_text()


def test_subnet_router_text_in_the_hooks_layout_matches_golden() -> None:
    got = render_text(router_filter(), "mesh0", Layout.HOOKS, SUBNET)
    assert got == (GOLDEN / "router-hooks.nft").read_text()


def test_without_router_settings_nothing_of_the_router_is_rendered() -> None:
    """A node that is not (or no longer) an approved router: routed traffic meets the plain drop."""
    text = render_text(router_filter(), "mesh0")
    assert "routed" not in text and "masquerade" not in text and "hook forward" not in text


def test_snat_off_keeps_members_addresses_for_subnets_only() -> None:
    text = render_text(router_filter(), "mesh0", router=replace(SUBNET, snat_subnet_routes=False))
    assert "routed-snat" not in text and "masquerade" not in text
    exit_text = render_text(router_filter(True), "mesh0",
                            router=replace(SUBNET, exit_node=True, snat_subnet_routes=False))
    assert 'ip daddr 192.168.50.0/24 return comment "--snat-subnet-routes=false' in exit_text
    assert "ip saddr 100.64.0.0/10 masquerade" in exit_text  # the internet has no route back to the mesh


def test_forwarding_owned_keeps_the_host_from_routing_anything_else() -> None:
    assert "meshctl turned forwarding on" not in render_text(router_filter(), "mesh0", router=SUBNET)
    text = render_text(router_filter(), "mesh0", router=replace(SUBNET, forwarding_owned=True))
    assert 'iifname != "mesh0" oifname != "mesh0" drop comment "meshctl turned forwarding on for the mesh only"' in text


def test_exit_node_routes_everything_outside_the_mesh() -> None:
    pf = router_filter(True)
    text = render_text(pf, "mesh0", router=replace(SUBNET, exit_node=True))
    assert "ip daddr { 0.0.0.0-100.63.255.255, 100.128.0.0-255.255.255.255 } jump routed" in text
    # oscar's autogroup:internet grant reaches the internet, never the mesh or the LAN's private space
    assert "ip saddr 100.64.0.3 ip daddr { 1.0.0.0-9.255.255.255, 11.0.0.0-100.63.255.255," in text


def test_mss_is_clamped_to_the_tunnel_mtu() -> None:
    text = render_text(router_filter(), "mesh0", router=replace(SUBNET, mtu=1380))
    assert "tcp option maxseg size > 1340 tcp option maxseg size set 1340" in text  # IPv4: 1380 - 40
    assert "tcp option maxseg size > 1320 tcp option maxseg size set 1320" in text  # IPv6: 1380 - 60


@pytest.mark.netns
@pytest.mark.parametrize("layout", list(Layout), ids=lambda la: la.name)
@pytest.mark.parametrize("settings", [SUBNET, replace(SUBNET, exit_node=True, forwarding_owned=True),
                                      replace(SUBNET, snat_subnet_routes=False)], ids=["subnet", "exit", "no-snat"])
def test_nft_takes_the_router_rules_and_lists_them_back(scratch_ns: str, layout: Layout,
                                                        settings: RouterSettings) -> None:
    """JSON loaded is JSON listed (so a no-op pass sees the table current), in both layouts."""
    pf = router_filter(settings.exit_node)
    key = (scratch_ns, "mesh0")
    apply._DEVICE_HOOKS[key] = layout is Layout.DEVICE
    try:
        assert apply_filter(pf, "mesh0", scratch_ns, settings) is True
        assert read_table(scratch_ns) == table_objects(pf, "mesh0", layout, settings)
        assert apply_filter(pf, "mesh0", scratch_ns, settings) is False
        # no longer a router: the router's chains and the inet table go
        assert apply_filter(pf, "mesh0", scratch_ns) is True
        assert read_table(scratch_ns) == table_objects(pf, "mesh0", layout)
    finally:
        apply._DEVICE_HOOKS.pop(key, None)
