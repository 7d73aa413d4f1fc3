"""A mesh with no server of its own (issue 18): endpoints through the git host, end to end.

No relay runs and none is listed; no device gives a static endpoint unless it is a server.

    a -- nat-a --+                                        +-- nat-b -- b
                 +-- internet: git daemon (the only server), coturn --+

Everything a device learns of the other comes from the other's signed record on its own
branch `endpoints/<name>`, fetched with main. The git host is written to directly by the
tests (GitHost) to plant what a lying host could: forged, stale and replayed records.
"""

from __future__ import annotations

import json
import time

import pytest
from endpoints_support import (
    GitHost,
    agent_log,
    forged_record,
    nat_mesh_without_endpoints,
    peer,
    pings,
    signed_record,
    state_dir,
)

from lab import PORT_RESTRICTED, Lab
from lab.core import wait_for
from lab.scenario import MeshScenario, RelayBox, _nat_mesh_with_lab_stun, build_nat_mesh
from lab.topology import two_nats
from meshctl.coord.endpoint_verify import FRESH_FOR_S

pytestmark = pytest.mark.netns

DIRECT_WITHIN_S = 15.0  # both agents up; the bench measures the real figure (bench/endpoints_first_ping.py)


def is_direct(mesh: MeshScenario, name: str, other: str, public_ip: str) -> bool:
    p = peer(mesh, name, other)
    return p["path"] == "direct" and str(p["endpoint"]).split(":")[0] == public_ip


def direct_both(lab: Lab, mesh: MeshScenario, topo: object) -> None:
    ip_a, ip_b = str(topo.nat_a.public_ip), str(topo.nat_b.public_ip)  # type: ignore[attr-defined]
    took = wait_for(lambda: is_direct(mesh, "a", "b", ip_b) and is_direct(mesh, "b", "a", ip_a), DIRECT_WITHIN_S)
    assert took is not None, (peer(mesh, "a", "b"), peer(mesh, "b", "a"),
                              agent_log(lab, mesh.members["a"].node)[-3000:])
    assert wait_for(lambda: pings(mesh, "a", "b") and pings(mesh, "b", "a"), 10.0) is not None


def network_id(lab: Lab, mesh: MeshScenario, name: str) -> str:
    return str(json.loads((state_dir(lab, mesh.members[name].node) / "node.json").read_text())["network_id"])


def test_port_preserving_nats_connect_directly_with_no_relay_and_no_endpoint(lab: Lab) -> None:
    mesh, topo = nat_mesh_without_endpoints(lab, PORT_RESTRICTED, PORT_RESTRICTED)
    mesh.up_together(("a", "b"))
    direct_both(lab, mesh, topo)
    host = GitHost(topo.repo_dir)
    for name, nat in (("a", topo.nat_a), ("b", topo.nat_b)):
        record, _commit = host.branch(name) or ({}, "")
        assert f"{nat.public_ip}:51820" in record["candidates"], record  # STUN-mapped, and local ones
        assert "agent" not in record  # an agent published it
        status = mesh.status(name)
        assert status["relays"] == []
        assert status["self"]["endpoint_record"]["push_rights"] is True
        assert status["self"]["endpoint_record"]["summary"].startswith("published ")
    assert peer(mesh, "a", "b")["record"] == "fresh"


def test_two_lan_devices_without_endpoints_connect_directly(lab: Lab) -> None:
    from lab.topology import one_lan

    topo = one_lan(lab, 2)
    mesh = MeshScenario(lab, topo.git_url, topo.repo_dir, "lanmesh")
    mesh.init()  # no STUN servers, no relays: local addresses are all there is
    for host, name in zip(topo.hosts, ("n1", "n2"), strict=True):
        mesh.join(host, name)
    for name in ("n1", "n2"):
        mesh.approve(name)
    mesh.up_together(("n1", "n2"))
    ip1, ip2 = str(topo.hosts[0].ipv4), str(topo.hosts[1].ipv4)

    def direct() -> bool:
        return (peer(mesh, "n1", "n2")["endpoint"] == f"{ip2}:51820"
                and peer(mesh, "n2", "n1")["endpoint"] == f"{ip1}:51820"
                and peer(mesh, "n1", "n2")["path"] == "direct")

    assert wait_for(direct, DIRECT_WITHIN_S) is not None, (
        peer(mesh, "n1", "n2"), peer(mesh, "n2", "n1"), agent_log(lab, topo.hosts[0])[-3000:])
    assert wait_for(lambda: pings(mesh, "n1", "n2") and pings(mesh, "n2", "n1"), 10.0) is not None


def test_a_laptop_reaches_a_cron_synced_server_within_5_s_of_up(lab: Lab) -> None:
    """The server runs no agent, only `meshctl sync` from cron, and has a static endpoint."""
    laptop = lab.host("laptop")
    lab.nat_router("home", PORT_RESTRICTED, [laptop])
    server = lab.public_host("server")
    repo = lab.bare_repo()

    class Topo:
        git_url, repo_dir, stun, internet = lab.git_daemon(repo), repo, lab.stun_server(), lab.internet()

    mesh = _nat_mesh_with_lab_stun(lab, Topo, "cronmesh")
    mesh.join(laptop, "laptop")
    mesh.join(server, "server", endpoint=f"{server.ipv4}:51820")
    for name in ("laptop", "server"):
        mesh.approve(name)
    out = mesh.meshctl("server", "sync").stdout  # what cron runs
    assert "accepted serial" in out
    record, _ = GitHost(repo).branch("server") or ({}, "")
    assert record["agent"] is False and f"{server.ipv4}:51820" in record["candidates"], record
    mesh.up("laptop")
    took = wait_for(lambda: pings(mesh, "laptop", "server"), 5.0, interval=0.1)
    assert took is not None, (peer(mesh, "laptop", "server"), agent_log(lab, laptop)[-3000:])
    p = peer(mesh, "laptop", "server")
    assert p["endpoint"] == f"{server.ipv4}:51820" and p["record"] == "fresh"


def test_forged_stale_and_replayed_records_are_ignored(lab: Lab) -> None:
    """a and b are connected; the git host then plants records on b's branch pointing at a sink
    it controls. a refuses or does not use each of them: the sink hears nothing, the path stays."""
    mesh, topo = nat_mesh_without_endpoints(lab, PORT_RESTRICTED, PORT_RESTRICTED)
    mesh.up("a", "--sync-interval", "2")
    mesh.up("b", "--sync-interval", "2")
    direct_both(lab, mesh, topo)
    host = GitHost(topo.repo_dir)
    genuine = host.files("b")
    nid = network_id(lab, mesh, "b")
    sink = lab.public_host("sink")
    listener = lab.udp_agent(sink, 41641)
    bait = f'["{sink.ipv4}:41641"]'.encode()
    a_sees = lambda: peer(mesh, "a", "b")["record"] or ""  # noqa: E731

    host.plant("b", forged_record(genuine, nid, bait))  # 1. forged: not b's signature
    assert wait_for(lambda: a_sees().startswith("refused: not signed by b's identity key"), 10.0), a_sees()

    b_node = mesh.members["b"].node
    newest = json.loads(genuine["endpoint.json"])["counter"]
    stale = signed_record(lab, b_node, "b", nid, (f"{sink.ipv4}:41641",), at=int(time.time()) - FRESH_FOR_S - 60,
                          counter=newest + 1)
    host.plant("b", stale)  # 2. b's own signature, newer counter, but 11 minutes old
    assert wait_for(lambda: a_sees().startswith("stale"), 10.0), a_sees()

    replay = signed_record(lab, b_node, "b", nid, (f"{sink.ipv4}:41641",), at=int(time.time()), counter=newest - 1)
    host.plant("b", replay)  # 3. fresh and signed by b, but an older counter than accepted: a replay
    assert wait_for(lambda: a_sees().startswith("refused: rolled back"), 10.0), a_sees()

    assert listener.recv(3.0) == []  # not one probe to what the host planted
    assert is_direct(mesh, "a", "b", str(topo.nat_b.public_ip))
    assert pings(mesh, "a", "b")
    assert "ignored: rolled back" in agent_log(lab, mesh.members["a"].node)


def test_the_git_host_going_down_leaves_existing_paths_up(lab: Lab) -> None:
    mesh, topo = nat_mesh_without_endpoints(lab, PORT_RESTRICTED, PORT_RESTRICTED)
    mesh.up("a", "--sync-interval", "2")
    mesh.up("b", "--sync-interval", "2")
    direct_both(lab, mesh, topo)
    with lab.git_daemon_stopped(topo.git_url):
        assert wait_for(lambda: mesh.status("a")["coordination"]["error"] is not None, 15.0) is not None
        for _ in range(10):  # five sync intervals and more of failed fetches
            assert pings(mesh, "a", "b") and pings(mesh, "b", "a")
            time.sleep(1.0)
        assert is_direct(mesh, "a", "b", str(topo.nat_b.public_ip))
        assert is_direct(mesh, "b", "a", str(topo.nat_a.public_ip))


def test_an_idle_agent_fetches_once_per_sync_interval_and_sooner_for_a_peer_without_a_path(lab: Lab) -> None:
    """No busy polling: with every peer connected, one fetch per sync interval and no push; a peer
    that loses its path makes the agent look for its record within seconds (then backing off)."""
    mesh, topo = build_nat_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED, static_endpoints=False, verbose_git=True)
    mesh.up("a", "--sync-interval", "10")
    mesh.up("b", "--sync-interval", "10")
    direct_both(lab, mesh, topo)
    ip_a = str(topo.nat_a.public_ip)

    def requests(kind: str) -> int:
        return sum(1 for who, what in lab.git_requests(topo.git_url) if who == ip_a and what == kind)

    time.sleep(3)
    fetches, pushes = requests("upload-pack"), requests("receive-pack")
    time.sleep(30)
    assert requests("upload-pack") - fetches <= 4  # three sync intervals (and one of slack)
    assert requests("receive-pack") == pushes  # nothing changed: nothing pushed
    mesh.meshctl("b", "down")
    assert wait_for(lambda: "b: path -> none" in agent_log(lab, topo.a), 30.0) is not None
    fetches = requests("upload-pack")
    time.sleep(10)
    assert requests("upload-pack") - fetches >= 4, agent_log(lab, topo.a)[-2000:]  # 1, 1.5, 2.3, 3.4 s apart


def test_a_relay_under_the_wrong_name_is_reported_on_both_sides(lab: Lab) -> None:
    topo = two_nats(lab, PORT_RESTRICTED, PORT_RESTRICTED)
    mesh = _nat_mesh_with_lab_stun(lab, topo, "relaymesh")
    node = lab.public_host("relay")
    # The operator starts it with the default --name ("relay"); the admin lists it as "lab".
    relay = RelayBox(lab, node, "relay", 3340, [
        "relay", "--listen", "0.0.0.0:3340", "--repo", topo.git_url, "--root", mesh.fingerprint,
        "--sync-interval", "2"])
    relay.start()
    mesh.admin("admin", "relay", "add", "lab", relay.address, "--identity-key", relay.identity)
    mesh.git("push", "-q", str(mesh.repo_dir), "main")
    mesh.join(topo.a, "a")
    mesh.approve("a")
    assert wait_for(lambda: "lists this relay" in relay.log(), 15.0) is not None, relay.log()[-2000:]
    assert "members refuse it, since it introduces itself as 'relay': restart it with --name lab" in relay.log()
    mesh.up("a")

    def told() -> bool:
        return any(r["name"] == "lab" and r["last_error"] == "it introduces itself as 'relay'"
                   for r in mesh.status("a")["relays"])

    assert wait_for(told, 15.0) is not None, (mesh.status("a")["relays"], agent_log(lab, topo.a)[-2000:])
    assert "relay lab: it introduces itself as 'relay'" in agent_log(lab, topo.a)
    human = mesh.meshctl("a", "status").stdout
    assert f"relay lab {relay.address}: not connected: it introduces itself as 'relay'" in human, human
    relay.stop()


def test_without_push_rights_relays_carry_it_and_status_says_why(lab: Lab) -> None:
    from lab.scenario import build_relay_mesh

    mesh, topo, relay = build_relay_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED)
    GitHost(topo.repo_dir).refuse_pushes_of("endpoints/b")
    mesh.up_together(("a", "b"))
    assert wait_for(lambda: pings(mesh, "a", "b") and pings(mesh, "b", "a"), 20.0) is not None
    record = mesh.status("b")["self"]["endpoint_record"]
    assert record["push_rights"] is False, record
    assert "push refused: endpoints/b: pre-receive hook declined" in record["error"], record
    human = mesh.meshctl("b", "status").stdout
    assert "endpoint record: not published: no push rights" in human, human
    assert GitHost(topo.repo_dir).branch("b") is None
    assert GitHost(topo.repo_dir).branch("a") is not None
    relay.stop()
