"""End-to-end: `meshctl sync` from cron (no agent) is one level-triggered pass.

Every pass reads WireGuard, addresses and routes, meshctl's nft table and the resolver back and
plans against them: a pass that changes nothing is quiet and writes nothing; a manual `wg set`,
a roam, a route or an nft rule deleted by hand are healed by the very next sync; a dead
wireguard-go is restarted; an expired state is still reported on a pass that changes nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from e2e_support import interface, mesh_prefixes, state_dir, wg_dump

from lab import lab_unavailable, open_lab
from lab.scenario import MeshScenario, build_lan_mesh
from meshctl.agent.desired import KEEPALIVE_S
from meshctl.wg.userspace import find_wireguard_go

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def cron_mesh() -> Iterator[MeshScenario]:
    """Two nodes configured by `meshctl sync` alone."""
    reason = lab_unavailable() or next((f"needs `{t}`" for t in ("wireguard-go", "wg", "git", "ping")
                                        if shutil.which(t) is None), None)
    if reason:
        pytest.skip(reason)
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 2)
        for name in mesh.members:
            mesh.meshctl(name, "sync")
        yield mesh
        for member in mesh.members.values():
            lab.meshctl(member.node, ["down"], check=False)


def peer_key(mesh: MeshScenario, name: str) -> str:
    return str(mesh.status(name)["self"]["wg_public_key"])


def nft_table(mesh: MeshScenario, name: str) -> list[dict[str, object]]:
    """meshctl's table (netdev layout) as nft lists it, without handles."""
    out = mesh.lab.run(mesh.members[name].node, ["nft", "-j", "list", "table", "netdev", "meshctl"]).stdout
    return [{k: {f: v for f, v in body.items() if f != "handle"} for k, body in item.items()}
            for item in json.loads(out)["nftables"] if "metainfo" not in item]


def mesh_routes(mesh: MeshScenario, name: str) -> list[str]:
    lab, node = mesh.lab, mesh.members[name].node
    ifname = interface(lab, node)
    return sorted(r["dst"] for family in ("-4", "-6")
                  for r in json.loads(lab.run(node, ["ip", "-j", family, "route", "show", "dev", ifname,
                                                     "proto", "109"]).stdout))


def test_a_no_op_sync_is_quiet_and_changes_nothing(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    cron_mesh.meshctl("node1", "sync")
    before = (wg_dump(lab, node).peers, mesh_routes(cron_mesh, "node1"), nft_table(cron_mesh, "node1"))
    proc = cron_mesh.meshctl("node1", "sync")
    assert proc.stdout == "" and proc.stderr == ""
    assert (wg_dump(lab, node).peers, mesh_routes(cron_mesh, "node1"), nft_table(cron_mesh, "node1")) == before


def test_a_route_and_an_nft_rule_deleted_by_hand_are_healed_by_the_next_sync(cron_mesh: MeshScenario) -> None:
    """Drift outside WireGuard: every pass reads routes and the nft table back, so the very next
    sync puts back what was deleted (a pass that trusted a record of its last write did not)."""
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname = interface(lab, node)
    cron_mesh.meshctl("node1", "sync")
    routes, table = mesh_routes(cron_mesh, "node1"), nft_table(cron_mesh, "node1")
    assert routes and any("rule" in item for item in table)
    lab.run(node, ["ip", "route", "del", routes[0], "dev", ifname, "proto", "109"])
    listing = json.loads(lab.run(node, ["nft", "-j", "-a", "list", "table", "netdev", "meshctl"]).stdout)
    rule = next(item["rule"] for item in listing["nftables"] if "rule" in item)
    lab.run(node, ["nft", "delete", "rule", "netdev", "meshctl", rule["chain"], "handle", str(rule["handle"])])
    assert mesh_routes(cron_mesh, "node1") != routes and nft_table(cron_mesh, "node1") != table
    proc = cron_mesh.meshctl("node1", "sync")
    assert f"route: add route {routes[0]} dev {ifname}" in proc.stdout, proc.stdout
    assert "firewall: replace table netdev meshctl" in proc.stdout, proc.stdout
    assert mesh_routes(cron_mesh, "node1") == routes
    assert nft_table(cron_mesh, "node1") == table
    assert cron_mesh.meshctl("node1", "sync").stdout == ""  # and then nothing more to do


def test_a_manual_wg_set_is_healed_by_the_next_sync(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname, other = interface(lab, node), peer_key(cron_mesh, "node2")
    cron_mesh.meshctl("node1", "sync")
    lab.run(node, ["wg", "set", ifname, "peer", other, "persistent-keepalive", "7", "allowed-ips", "10.9.9.9/32"])
    proc = cron_mesh.meshctl("node1", "sync")
    assert other in proc.stdout, proc.stdout  # the repair is printed
    healed = wg_dump(lab, node).peers[other]
    node2 = cron_mesh.members["node2"]
    assert healed.allowed_ips == mesh_prefixes([node2.mesh_ipv4, node2.mesh_ipv6])
    assert healed.keepalive == KEEPALIVE_S
    lab.run(node, ["wg", "set", ifname, "peer", other, "remove"])
    assert other in cron_mesh.meshctl("node1", "sync").stdout
    assert other in wg_dump(lab, node).peers
    assert cron_mesh.ping("node1", node2.mesh_ipv4)


def test_a_roam_is_undone_by_the_next_sync(cron_mesh: MeshScenario) -> None:
    """WireGuard may roam a peer's endpoint at any time (and did, during a pass: c1dadd4); the next
    pass reads the device and puts the endpoint back, whatever happened in between."""
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname, other = interface(lab, node), peer_key(cron_mesh, "node2")
    cron_mesh.meshctl("node1", "sync")
    wanted = wg_dump(lab, node).peers[other].endpoint
    lab.run(node, ["wg", "set", ifname, "peer", other, "endpoint", "192.0.2.7:9"])  # a roam
    proc = cron_mesh.meshctl("node1", "sync")
    assert other in proc.stdout, proc.stdout
    assert wg_dump(lab, node).peers[other].endpoint == wanted


def test_a_dead_wireguard_go_is_restarted(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname = interface(lab, node)
    cron_mesh.meshctl("node1", "sync")
    lab.run(node, ["ip", "link", "del", ifname])  # wireguard-go exits with its link
    cron_mesh.meshctl("node1", "sync")
    assert find_wireguard_go(ifname) is not None
    assert cron_mesh.ping("node1", cron_mesh.members["node2"].mesh_ipv4)


def test_an_expired_state_is_reported_on_a_no_op(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    cron_mesh.meshctl("node1", "sync")
    trust = state_dir(lab, node) / "trust.json"
    saved = trust.read_text()
    doc = json.loads(saved)
    doc["expires"] = 1  # as if the clock had run past it: same tip, nothing to verify again
    trust.write_text(json.dumps(doc))
    try:
        proc = cron_mesh.meshctl("node1", "sync", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "state.json: expired at 1970-01-01" in proc.stderr, proc.stderr
        assert cron_mesh.ping("node1", cron_mesh.members["node2"].mesh_ipv4)  # last good config kept
    finally:
        trust.write_text(saved)
