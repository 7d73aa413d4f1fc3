"""Replayed and redirected disco in the lab (issue 23, "What was found" 4 and 5).

node2's agent pings node1's every few seconds (heartbeats) and answers node1's pings; a capture in
node1's namespace stands in for an on-path attacker, the LAN's git host replays from its own
address. Tests run in file order on one mesh.
"""

from __future__ import annotations

import time

import pytest
from attack_support import PING_LEN, PONG_LEN, WG_PORT, AttackMesh, wait_until

from meshctl.nat import paths

pytestmark = pytest.mark.netns


def test_a_replayed_ping_makes_the_node_send_at_most_a_pong_and_a_ping(attack_mesh: AttackMesh) -> None:
    """It sent a pong, two punches and two pings to the attacker's address (5 for 1); now at most
    a pong and one ping to verify the address, and nothing after."""
    am = attack_mesh
    ping = am.capture("node1", "node2", PING_LEN)
    back = am.replay("node1", ping, count=1, listen_s=6.0)
    assert 1 <= len(back) <= 2, f"one replayed ping brought back {len(back)} packets: {back}"
    assert 0 not in back, "a punch reached the attacker"
    assert am.wg_endpoint("node1", "node2") == f"{am.ip('node2')}:{WG_PORT}"
    assert am.direct("node1", "node2")


def test_a_burst_of_replays_brings_back_a_few_packets_at_most(attack_mesh: AttackMesh) -> None:
    am = attack_mesh
    ping = am.capture("node1", "node2", PING_LEN)
    listen_s = 5.0
    back = am.replay("node1", ping, count=500, listen_s=listen_s)
    bound = paths.UNVERIFIED_SENDS_BURST + paths.UNVERIFIED_SENDS_PER_S * (listen_s + 1)
    assert len(back) <= bound, f"500 replays brought back {len(back)} packets"
    assert am.wg_endpoint("node1", "node2") == f"{am.ip('node2')}:{WG_PORT}"
    sent, answered = am.pings("node2", "node1", 20)
    assert answered == sent


def test_replayed_pongs_move_nothing(attack_mesh: AttackMesh) -> None:
    """A pong counts once, for a txid node1 still waits for, from the address it pinged."""
    am = attack_mesh
    pong = am.capture("node1", "node2", PONG_LEN)
    am.replay("node1", pong, count=20, listen_s=1.0)
    assert am.wg_endpoint("node1", "node2") == f"{am.ip('node2')}:{WG_PORT}"
    assert am.peer("node1", "node2")["endpoint"] == f"{am.ip('node2')}:{WG_PORT}"
    sent, answered = am.pings("node2", "node1", 20)
    assert answered == sent


def test_pongs_rewritten_to_come_from_the_attacker_never_move_the_endpoint(attack_mesh: AttackMesh) -> None:
    """An on-path attacker rewrites the source of every disco pong node2 sends node1 to its own
    address, for 15 s. node1 ignores them (a pong proves only the address it was sent to), so
    its path to node2 dies; WireGuard keeps the proven endpoint and the tunnel is never
    black-holed: every ping across it is answered, and the endpoint never becomes the attacker's."""
    am = attack_mesh
    node1 = am.mesh.members["node1"].node
    attacker_ip = am.attacker_ip()
    rewrite = (f"table ip attack {{\n chain pre {{\n  type filter hook prerouting priority -400; policy accept;\n"
               f"  ip saddr {am.ip('node2')} udp sport {WG_PORT} udp length {PONG_LEN + 8} "
               f"@th,64,32 0x4d43f09f ip saddr set {attacker_ip}\n }}\n}}\n")
    am.lab.run(node1, ["nft", "-f", "-"], input=rewrite)
    seen: set[str | None] = set()
    try:
        pinger = am.lab.popen(am.mesh.members["node2"].node,
                              ["ping", "-q", "-c", "150", "-i", "0.1", "-W", "1", am.mesh.members["node1"].mesh_ipv4])
        end = time.monotonic() + 15
        while time.monotonic() < end:
            seen.add(am.wg_endpoint("node1", "node2"))
            time.sleep(0.5)
        assert pinger.wait(30) == 0, "pings across the tunnel were lost while pongs were rewritten"
        # The tunnel is live on the kept endpoint, so status says direct (issue 17: a live
        # handshake never shows none); the path's proof, a pong's latency, is gone.
        assert am.peer("node1", "node2")["latency_ms"] is None, "rewritten pongs still counted"
    finally:
        am.lab.run(node1, ["nft", "delete", "table", "ip", "attack"], check=False)
    assert seen == {f"{am.ip('node2')}:{WG_PORT}"}, seen
    wait_until(lambda: am.direct("node1", "node2") and am.peer("node1", "node2")["latency_ms"] is not None,
               "proven direct again once pongs come back unchanged", 60)
