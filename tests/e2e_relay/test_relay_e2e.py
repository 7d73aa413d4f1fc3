"""The relay end to end: two devices behind NATs, `meshctl relay` on a public host, agents up.

    a -- nat-a (profile_a) --+                                   +-- nat-b (profile_b) -- b
                             +-- internet: git daemon, coturn, relay --+

"relayed" is checked three ways: `meshctl status --json` says path "relay" with the relay's
name (and no endpoint), `meshctl ping` says `via relay r1`, and an ICMP echo over the mesh
goes through while WireGuard's endpoint is the relay's channel port (relay_channel in the
status), or the agent's loopback proxy where a channel cannot be bound (UDP blocked).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from relay_e2e_support import RELAY_NAME, RelayedMesh, build, need_lab

from lab import FULL_CONE, PORT_RESTRICTED, SYMMETRIC, Lab, open_lab
from lab.core import wait_for

pytestmark = pytest.mark.netns

RELAYED_WITHIN_S = 15.0
CHANNEL_WITHIN_S = 10.0  # after relayed: a request, a bind from each side, READY, one pass
TRAFFIC_WITHIN_S = 10.0
DIRECT_WITHIN_S = 20.0
RESUME_AFTER_RESTART_S = 5.0  # issue 5
# Issue 5 asks for 10 s. Death of a direct path is decided by meshctl/nat/paths.py
# (heartbeat every 3 s, 4 missed pongs: at most ~8 s), then the relay takes over; the bound
# leaves 2 s over the goal for a loaded CI machine (the figure is printed).
TO_RELAY_GOAL_S = 10.0
TO_RELAY_AFTER_BLOCK_S = TO_RELAY_GOAL_S + 2.0
BACK_TO_DIRECT_S = 70.0  # issue 5
REVOKED_CUT_OFF_S = 15.0  # the relay syncs every 2 s; the agents only every 60 s
WG_PORT = 51820


def assert_relayed(rm: RelayedMesh) -> None:
    took = wait_for(lambda: rm.is_relayed("a") and rm.is_relayed("b"), RELAYED_WITHIN_S)
    assert took is not None, rm.paths_report()
    assert wait_for(lambda: rm.ping("a") and rm.ping("b"), TRAFFIC_WITHIN_S) is not None, rm.logs()
    # WireGuard really sends to the relay's channel ports: no meshctl process in the data path
    took = wait_for(lambda: rm.on_channel("a") and rm.on_channel("b"), CHANNEL_WITHIN_S)
    assert took is not None, rm.paths_report()
    assert rm.wg_endpoint("a") != rm.wg_endpoint("b")  # a port each
    assert wait_for(lambda: rm.ping("a") and rm.ping("b"), TRAFFIC_WITHIN_S) is not None, rm.logs()
    metrics = rm.relay_metrics()
    assert "meshctl_relay_channels 1\n" in metrics, metrics
    assert 'meshctl_relay_channel_packets_total{direction="out"} 0\n' not in metrics, metrics
    out = rm.mesh.meshctl("a", "ping", "b").stdout.strip()
    b_ip = rm.mesh.members["b"].mesh_ipv4
    assert out.startswith(f"pong from b ({b_ip}) via relay {RELAY_NAME} in "), out
    assert out.endswith("ms"), out
    human = rm.mesh.meshctl("a", "status").stdout
    assert f"relay {RELAY_NAME} (channel)" in human, human
    doc = rm.agent_status("a")
    assert doc["home_relay"] == RELAY_NAME
    assert [(r["name"], r["connected"]) for r in doc["relays"]] == [(RELAY_NAME, True)]


@pytest.fixture(scope="module")
def symmetric_pair() -> Iterator[RelayedMesh]:
    """symmetric <-> symmetric, relayed: shared by the tests below (the last one revokes b)."""
    need_lab()
    with open_lab("mrly") as lab:
        rm = build(lab, SYMMETRIC, SYMMETRIC)
        rm.up_both()
        yield rm


def test_symmetric_pair_connects_through_the_relay(symmetric_pair: RelayedMesh) -> None:
    assert_relayed(symmetric_pair)


def test_port_restricted_and_symmetric_connect_through_the_relay(lab: Lab) -> None:
    rm = build(lab, PORT_RESTRICTED, SYMMETRIC)
    rm.up_both()
    assert_relayed(rm)


def test_traffic_resumes_after_the_relay_restarts(symmetric_pair: RelayedMesh) -> None:
    rm = symmetric_pair
    assert wait_for(lambda: rm.ping("a"), TRAFFIC_WITHIN_S) is not None, rm.logs()
    rm.relay.stop()
    time.sleep(1.0)
    assert not rm.ping("a"), "traffic went through with the relay stopped"
    rm.relay.start()  # returns once the relay has synced and listens
    took = wait_for(lambda: rm.ping("a", 1, 1), RESUME_AFTER_RESTART_S + 5)
    assert took is not None and took <= RESUME_AFTER_RESTART_S, (took, rm.logs())
    assert rm.ping("b")
    assert wait_for(lambda: rm.is_relayed("a") and rm.is_relayed("b"), RELAYED_WITHIN_S) is not None


def test_revoked_member_cannot_use_the_relay(symmetric_pair: RelayedMesh) -> None:
    rm = symmetric_pair
    assert wait_for(lambda: rm.ping("a"), TRAFFIC_WITHIN_S) is not None, rm.logs()
    rm.mesh.revoke("b")
    took = wait_for(lambda: "disconnected: b " in rm.relay.log(), REVOKED_CUT_OFF_S)
    assert took is not None, rm.relay.log()[-2000:]
    assert wait_for(lambda: not rm.ping("a", 1, 1), REVOKED_CUT_OFF_S) is not None
    # b stays out: its relay client is refused, not merely disconnected
    relays = rm.agent_status("b")["relays"]
    assert relays[0]["connected"] is False
    assert "refused" in str(relays[0]["last_error"]), relays
    time.sleep(3)
    assert not rm.ping("a", 2, 1)


def test_direct_flow_moves_to_the_relay_and_back(lab: Lab) -> None:
    """port-restricted <-> full cone: direct; UDP on the WireGuard port blocked at a's NAT
    (the relay's traffic uses other ports): relayed; unblocked: direct again."""
    rm = build(lab, PORT_RESTRICTED, FULL_CONE)
    rm.up_both()
    took = wait_for(lambda: rm.is_direct("a") and rm.is_direct("b"), DIRECT_WITHIN_S)
    assert took is not None, rm.paths_report()
    assert wait_for(lambda: rm.ping("a") and rm.ping("b"), TRAFFIC_WITHIN_S) is not None
    # status turns direct once the agent has told WireGuard; the pass that writes it may still run
    assert wait_for(lambda: not rm.wg_endpoint("a").startswith("127.0.0.1:"), TRAFFIC_WITHIN_S) is not None, \
        (rm.wg_endpoint("a"), rm.logs())
    lab.block_udp(rm.topo.nat_a, WG_PORT)
    blocked_at = time.monotonic()
    took = wait_for(lambda: rm.ping("a", 1, 1), TO_RELAY_AFTER_BLOCK_S + 10)
    assert took is not None, rm.logs()
    moved = time.monotonic() - blocked_at
    assert moved <= TO_RELAY_AFTER_BLOCK_S, (moved, rm.logs())
    # a's WireGuard port is blocked at its NAT, so no channel can be confirmed: once a's agent has
    # seen the path die (WireGuard may follow b's packets to the proxy before that), the proxy
    # carries it, and keeps carrying it.
    assert wait_for(lambda: rm.is_relayed("a"), TO_RELAY_AFTER_BLOCK_S) is not None, rm.peer_status("a")
    assert rm.ping("a", 3, 1) and rm.on_proxy("a"), rm.paths_report()
    assert wait_for(lambda: rm.is_relayed("b") and rm.ping("b"), TRAFFIC_WITHIN_S) is not None
    lab.unblock_udp(rm.topo.nat_a)
    took = wait_for(lambda: rm.is_direct("a") and rm.is_direct("b"), BACK_TO_DIRECT_S)
    assert took is not None, rm.paths_report()
    assert wait_for(lambda: not rm.wg_endpoint("a").startswith("127.0.0.1:") and rm.ping("a"),
                    TRAFFIC_WITHIN_S) is not None, rm.logs()
    print(f"direct -> relay in {moved:.1f} s; relay -> direct in {took:.1f} s after unblocking")
    # a relay that is down costs nothing but relayed paths
    rm.relay.stop()
    time.sleep(2)
    assert rm.ping("a", 3, 1) and rm.ping("b", 3, 1)
    assert rm.is_direct("a") and rm.is_direct("b")


def test_tcp_fallback_when_a_node_blocks_all_udp(lab: Lab) -> None:
    """a's network (its NAT router) drops all UDP; loopback inside a still works, as anywhere."""
    rm = build(lab, PORT_RESTRICTED, SYMMETRIC)
    lab.block_udp(rm.topo.nat_a)
    rm.up_both()
    took = wait_for(lambda: any(r["transport"] == "tcp" for r in rm.agent_status("a").get("relays", [])),
                    RELAYED_WITHIN_S + 10)
    assert took is not None, rm.logs()
    assert wait_for(lambda: rm.is_relayed("a") and rm.is_relayed("b"), RELAYED_WITHIN_S) is not None, rm.logs()
    assert wait_for(lambda: rm.ping("a") and rm.ping("b"), TRAFFIC_WITHIN_S) is not None, rm.logs()
    assert rm.agent_status("b")["relays"][0]["transport"] == "udp"
    # no UDP out of a's network: no channel either; both stay on the proxy, and it works
    assert rm.on_proxy("a") and rm.on_proxy("b"), (rm.wg_endpoint("a"), rm.wg_endpoint("b"))
