"""End-to-end (issue 19): subnet routers, an exit node, HA failover, through real git, agents,
wireguard-go, nftables and policy routing (picture: lab/topology.py RoutedSite).

Approvals as an admin gives them: r1's 192.168.50.0/24 named (its 10.99.0.0/24 never approved),
r2's by the policy's autoApprovers, ex as exit node (lab/scenario.py ROUTED_MEMBERS).
Tests run in file order on one mesh.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any, Final

import pytest
from routes_support import (
    WhoService,
    ask_who,
    install_leak_counter,
    leaked,
    ping,
    table_routes,
    wait_until,
)

from lab.core import SERVICE_V4, SERVICE_V6
from lab.scenario import MeshScenario

pytestmark = pytest.mark.netns

LANHOST: Final = "192.168.50.12"
R1_LAN, R2_LAN = "192.168.50.10", "192.168.50.11"
WHO_PORT, DENIED_PORT, NET_PORT = 80, 22, 8080
FAILOVER_TIMEOUT_S: Final = 40.0  # the goal (15 s) is measured by bench/routes_failover.py
Routed = tuple[MeshScenario, Any]


@pytest.fixture(scope="module")
def services(routed: Routed) -> Iterator[tuple[WhoService, WhoService]]:
    _, site = routed
    lan = WhoService(site.lanhost.ns, (WHO_PORT, DENIED_PORT))
    net = WhoService(site.internet.ns, (NET_PORT,))
    try:
        yield lan, net
    finally:
        lan.close()
        net.close()


def status(mesh: MeshScenario, name: str) -> dict[str, Any]:
    return dict(json.loads(mesh.meshctl(name, "status", "--json").stdout))


def peer_status(mesh: MeshScenario, on: str, peer: str) -> dict[str, Any]:
    return next(p for p in status(mesh, on)["peers"] if p["name"] == peer)


def allowed_ips(mesh: MeshScenario, on: str, peer: str) -> set[str]:
    """WireGuard's allowed IPs for `peer` on member `on` (what the device holds, not the plan)."""
    lab, node = mesh.lab, mesh.members[on].node
    ifname = lab.meshctl_env(node)["MESHCTL_INTERFACE"]
    key = peer_status(mesh, on, peer)["wg_public_key"]
    for line in lab.run(node, ["wg", "show", ifname, "allowed-ips"]).stdout.splitlines():
        k, _, ips = line.partition("\t")
        if k == key:
            return set(ips.split())
    return set()


def agent_pid(mesh: MeshScenario, name: str) -> int:
    env = mesh.lab.meshctl_env(mesh.members[name].node)
    with open(os.path.join(env["MESHCTL_STATE_DIR"], "agent.pid")) as f:
        return int(f.read())


# --- subnet routes -------------------------------------------------------------------------------


def test_admin_routes_lists_what_is_offered_and_approved(routed: Routed) -> None:
    mesh, _ = routed
    rows = {(r["member"], r["route"]): r for r in json.loads(mesh.admin("admin", "routes", "--json"))}
    assert rows[("r1", "192.168.50.0/24")]["in_use"] and rows[("r2", "192.168.50.0/24")]["in_use"]
    assert rows[("r1", "192.168.50.0/24")]["ha_group"] == ["r1", "r2"]
    assert not rows[("r1", "10.99.0.0/24")]["approved"]
    assert rows[("ex", "exit node")]["in_use"]


def test_client_with_accept_routes_reaches_the_lan_host(routed: Routed, services: tuple[WhoService, WhoService]
                                                        ) -> None:
    mesh, site = routed
    assert ask_who(site.client_a.ns, LANHOST, WHO_PORT) == R1_LAN  # through r1, masqueraded: r1 is primary
    assert ping(mesh.lab, site.client_a, LANHOST)
    assert table_routes(mesh.lab, site.client_a)[:1] == [f"192.168.50.0/24 dev "
                                                          f"{mesh.lab.meshctl_env(site.client_a)['MESHCTL_INTERFACE']}"
                                                          " proto 109"]
    r1 = peer_status(mesh, "client-a", "r1")
    assert r1["approved_routes"] == ["192.168.50.0/24"] and r1["routes_via"] == ["192.168.50.0/24"]
    assert peer_status(mesh, "client-a", "r2")["routes_via"] == []


def test_client_without_accept_routes_does_not(routed: Routed, services: tuple[WhoService, WhoService]) -> None:
    mesh, site = routed
    assert ask_who(site.client_b.ns, LANHOST, WHO_PORT) is None
    assert not ping(mesh.lab, site.client_b, LANHOST, count=1)
    assert table_routes(mesh.lab, site.client_b) == []
    assert "192.168.50.0/24" not in allowed_ips(mesh, "client-b", "r1")


def test_set_accept_routes_on_a_running_agent_and_back(routed: Routed, services: tuple[WhoService, WhoService]
                                                        ) -> None:
    mesh, site = routed
    mesh.meshctl("client-b", "set", "--accept-routes")
    assert ask_who(site.client_b.ns, LANHOST, WHO_PORT) == R1_LAN
    mesh.meshctl("client-b", "set", "--accept-routes=false")
    assert table_routes(mesh.lab, site.client_b) == []
    assert ask_who(site.client_b.ns, LANHOST, WHO_PORT) is None


def test_the_routers_filter_denies_what_the_policy_denies(routed: Routed, services: tuple[WhoService, WhoService]
                                                          ) -> None:
    mesh, site = routed
    lan, _ = services
    before = lan.accepted(DENIED_PORT)
    assert ask_who(site.client_a.ns, LANHOST, DENIED_PORT) is None  # no grant for port 22
    assert lan.accepted(DENIED_PORT) == before  # dropped at r1: the LAN host never saw the SYN
    assert ask_who(site.client_a.ns, R1_LAN, DENIED_PORT) is None  # nor r1's own LAN address
    assert ask_who(site.client_a.ns, LANHOST, WHO_PORT) == R1_LAN
    denied = mesh.meshctl("r1", "acl", "check", "alice@example.com", f"{LANHOST}:22", check=False)
    assert denied.returncode == 4  # `acl check` agrees with the router: denied


def test_snat_off_keeps_the_members_address(routed: Routed, services: tuple[WhoService, WhoService]) -> None:
    """`--snat-subnet-routes=false` on the router: the LAN host sees the member's own mesh
    address (and needs a route back to the mesh through the router)."""
    mesh, site = routed
    lab = mesh.lab
    lab.run(site.lanhost, ["ip", "route", "add", "100.64.0.0/10", "via", R1_LAN])
    try:
        mesh.meshctl("r1", "set", "--snat-subnet-routes=false")
        assert ask_who(site.client_a.ns, LANHOST, WHO_PORT) == mesh.members["client-a"].mesh_ipv4
    finally:
        mesh.meshctl("r1", "set", "--snat-subnet-routes")
        lab.run(site.lanhost, ["ip", "route", "del", "100.64.0.0/10"])
    assert ask_who(site.client_a.ns, LANHOST, WHO_PORT) == R1_LAN


def test_the_router_clamps_the_lan_hosts_mss_to_the_tunnel(routed: Routed,
                                                             services: tuple[WhoService, WhoService]) -> None:
    """The LAN host (MTU 1500) offers an MSS of 1460; what reaches the client through the tunnel
    offers at most 1380 (1420 - 40), counted on the client's mesh interface before any filter."""
    mesh, site = routed
    lab, client = mesh.lab, site.client_a
    ifname = lab.meshctl_env(client)["MESHCTL_INTERFACE"]
    lab.run(client, ["nft", "-f", "-"], input=f"""table netdev msswatch {{
	counter big {{ }}
	counter clamped {{ }}
	chain in {{
		type filter hook ingress device "{ifname}" priority -500; policy accept;
		ip saddr {LANHOST} tcp flags & (syn | ack) == syn | ack tcp option maxseg size > 1380 counter name "big"
		ip saddr {LANHOST} tcp flags & (syn | ack) == syn | ack tcp option maxseg size 1380 counter name "clamped"
	}}
}}
""")
    try:
        assert ask_who(client.ns, LANHOST, WHO_PORT) == R1_LAN
        listing = json.loads(lab.run(client, ["nft", "-j", "list", "counters", "table", "netdev", "msswatch"]).stdout)
        counts = {i["counter"]["name"]: i["counter"]["packets"] for i in listing["nftables"] if "counter" in i}
        assert counts == {"big": 0, "clamped": 1}, counts
    finally:
        lab.run(client, ["nft", "delete", "table", "netdev", "msswatch"], check=False)


def test_an_advertised_but_unapproved_prefix_is_installed_nowhere(routed: Routed) -> None:
    mesh, site = routed
    for name in mesh.members:
        node = mesh.members[name].node
        assert not any("10.99.0.0/24" in r for r in table_routes(mesh.lab, node)), name
        ruleset = mesh.lab.run(node, ["nft", "list", "ruleset"]).stdout
        assert "10.99.0.0" not in ruleset, name
        for peer in mesh.members:
            if peer != name:
                assert "10.99.0.0/24" not in allowed_ips(mesh, name, peer), (name, peer)
    assert peer_status(mesh, "client-a", "r1")["approved_routes"] == ["192.168.50.0/24"]


def test_update_request_from_the_device_reaches_the_admin(routed: Routed) -> None:
    """`meshctl set --advertise-routes` on a member -> branch update/NAME -> `admin approve`."""
    mesh, _ = routed
    out = mesh.meshctl("client-b", "set", "--advertise-routes", "10.77.0.0/24").stdout
    assert "update request pushed to branch update/client-b" in out
    mesh.git("fetch", "-q", str(mesh.repo_dir), "update/client-b")
    mesh.git("checkout", "-q", "-B", "update/client-b", "FETCH_HEAD")
    mesh.admin("repo", "verify", ".", "--base", "main")
    approved = mesh.admin("admin", "approve", "client-b", "--routes", "all")
    assert "approved the update of client-b" in approved and "routes of client-b: none -> 10.77.0.0/24" in approved
    mesh.git("checkout", "-q", "main")
    mesh.git("merge", "-q", "--ff-only", "update/client-b")
    mesh.git("push", "-q", str(mesh.repo_dir), "main")
    mesh.meshctl("client-a", "sync")
    assert peer_status(mesh, "client-a", "client-b")["approved_routes"] == ["10.77.0.0/24"]
    assert any(r.startswith("10.77.0.0/24 dev") for r in table_routes(mesh.lab, mesh.members["client-a"].node))


# --- the exit node --------------------------------------------------------------------------------


def test_exit_node_carries_traffic_the_client_cannot_send_alone(routed: Routed,
                                                                 services: tuple[WhoService, WhoService]) -> None:
    mesh, site = routed
    lab, client = mesh.lab, site.client_a
    phys = client.link("mesh").ifname
    install_leak_counter(lab, client, phys, "198.51.100.0/24", "2001:db8:51::/64")
    assert ask_who(client.ns, str(SERVICE_V4[0]), NET_PORT) is None  # alone: the gateway forwards nothing
    assert leaked(lab, client) > 0  # ... and the counter sees what goes out that way
    mesh.meshctl("client-a", "set", "--exit-node", "ex")
    ex_wan = str(site.ex.link("wan").ipv4.ip)
    assert ask_who(client.ns, str(SERVICE_V4[0]), NET_PORT) == ex_wan  # through ex, masqueraded
    assert ask_who(client.ns, str(SERVICE_V6[0]), NET_PORT) == str(site.ex.link("wan").ipv6.ip)
    assert ask_who(client.ns, LANHOST, WHO_PORT) == R1_LAN  # subnet routes still go to their router
    me = status(mesh, "client-a")
    assert me["routes"]["exit_node_in_use"] == "ex" and peer_status(mesh, "client-a", "ex")["exit_node_in_use"]


def test_with_an_exit_node_the_underlay_git_and_dns_stay_local(routed: Routed) -> None:
    mesh, site = routed
    mesh.meshctl("client-a", "sync")  # the git host is reached directly (a throw route), not through ex
    dig = ["dig", "+short", "+time=2", "+tries=2"]
    answer = mesh.lab.run(site.client_a, [*dig, f"r1.{mesh.name}.mesh"]).stdout.split()
    assert answer == [mesh.members["r1"].mesh_ipv4]  # MagicDNS
    upstream = mesh.lab.run(site.client_a, [*dig, "www.upstream.test"]).stdout
    assert upstream.split() == ["192.0.2.80"]  # forwarded to the resolver on the client's LAN
    assert ping(mesh.lab, site.client_a, mesh.members["ex"].mesh_ipv4)  # the tunnel itself works


def test_lan_access_only_when_asked(routed: Routed) -> None:
    mesh, site = routed
    neighbour = str(site.client_b.ipv4)
    assert not ping(mesh.lab, site.client_a, neighbour, count=1)  # into the tunnel; ex refuses private space
    mesh.meshctl("client-a", "set", "--exit-node-allow-lan-access")
    assert ping(mesh.lab, site.client_a, neighbour)
    mesh.meshctl("client-a", "set", "--exit-node-allow-lan-access=false")
    assert not ping(mesh.lab, site.client_a, neighbour, count=1)


def test_with_the_exit_node_gone_nothing_leaks(routed: Routed, services: tuple[WhoService, WhoService]) -> None:
    mesh, site = routed
    lab, client = mesh.lab, site.client_a
    install_leak_counter(lab, client, client.link("mesh").ifname, "198.51.100.0/24", "2001:db8:51::/64")
    mesh.meshctl("ex", "down")
    assert ask_who(client.ns, str(SERVICE_V4[0]), NET_PORT, timeout_s=3) is None
    assert ask_who(client.ns, str(SERVICE_V6[0]), NET_PORT, timeout_s=3) is None
    assert not ping(lab, client, str(SERVICE_V4[0]), count=2)
    assert leaked(lab, client) == 0
    assert any(r.startswith("default dev") for r in table_routes(lab, client))  # still into the tunnel
    mesh.meshctl("client-a", "set", "--exit-node", "")
    assert not any(r.startswith("default") for r in table_routes(lab, client))
    assert not ping(lab, client, str(SERVICE_V4[0]), count=1)
    assert leaked(lab, client) > 0  # without an exit node it goes out again: the counter would have seen it


# --- high availability ------------------------------------------------------------------------------


def test_ha_failover_when_the_primary_routers_agent_dies(routed: Routed,
                                                         services: tuple[WhoService, WhoService]) -> None:
    mesh, site = routed
    ns = site.client_a.ns
    assert ask_who(ns, LANHOST, WHO_PORT) == R1_LAN
    os.kill(agent_pid(mesh, "r1"), signal.SIGKILL)  # wireguard-go and r1's forwarding stay: only liveness tells
    took = wait_until(lambda: ask_who(ns, LANHOST, WHO_PORT, timeout_s=1) == R2_LAN, FAILOVER_TIMEOUT_S)
    assert took is not None, "client-a never moved to r2"
    assert "192.168.50.0/24" in allowed_ips(mesh, "client-a", "r2")
    assert "192.168.50.0/24" not in allowed_ips(mesh, "client-a", "r1")
    mesh.up("r1")  # r1 is back: traffic stays on r2
    assert wait_until(lambda: peer_status(mesh, "client-a", "r1")["path"] == "direct", 20) is not None
    assert wait_until(lambda: ask_who(ns, LANHOST, WHO_PORT) == R1_LAN, 8) is None
    os.kill(agent_pid(mesh, "r2"), signal.SIGKILL)  # only when r2 dies does it go back
    assert wait_until(lambda: ask_who(ns, LANHOST, WHO_PORT, timeout_s=1) == R1_LAN, FAILOVER_TIMEOUT_S) is not None
    mesh.up("r2")


def test_unapproving_drops_the_routes_on_the_next_sync(routed: Routed, services: tuple[WhoService, WhoService]
                                                        ) -> None:
    mesh, site = routed
    for router in ("r1", "r2"):
        mesh.admin("admin", "approve", router, "--routes", "none")
    mesh.git("push", "-q", str(mesh.repo_dir), "main")
    for name in ("client-a", "r1", "r2"):
        mesh.meshctl(name, "sync")
    assert not any(r.startswith("192.168.50.0/24") for r in table_routes(mesh.lab, site.client_a))
    assert "192.168.50.0/24" not in allowed_ips(mesh, "client-a", "r1")
    assert ask_who(site.client_a.ns, LANHOST, WHO_PORT) is None
    forwarding = mesh.lab.run(site.r1, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
    assert forwarding == "0"  # meshctl had turned it on; no route left, so it is off again
    assert "routed" not in mesh.lab.run(site.r1, ["nft", "list", "ruleset"]).stdout


def test_down_removes_meshctls_rules_and_table(routed: Routed) -> None:
    mesh, site = routed
    lab, client = mesh.lab, site.client_a
    assert any(r.startswith("10.77.0.0/24") for r in table_routes(lab, client))  # client-b's route, approved above
    mesh.meshctl("client-a", "down")
    assert table_routes(lab, client) == []
    rules = lab.run(client, ["ip", "rule"]).stdout + lab.run(client, ["ip", "-6", "rule"]).stdout
    assert not any(f"{prio}:" in rules for prio in (5300, 5310, 5320)), rules
