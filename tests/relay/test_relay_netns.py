"""End to end: two wireguard-go devices behind symmetric NATs whose only path is the relay.

    internet ── relay (public, `meshctl relay` on :3340)
       ├── nat-a (symmetric) ── a: wireguard-go + relay peer tool (proxy endpoint for b)
       └── nat-b (symmetric) ── b: wireguard-go + relay peer tool (proxy endpoint for a)

WireGuard is configured by hand (`wg set ... endpoint 127.0.0.1:PORT`): no agent involved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from relay_netns import RelayLab, netns_missing
from relay_support import RelayMesh, make_relay_mesh

from lab import Lab, rules
from lab.core import poll

pytestmark = pytest.mark.netns

RESUME_LIMIT_S = 5.0


@pytest.fixture
def relay_lab(tmp_path: Path) -> Iterator[RelayLab]:
    reason = netns_missing()
    if reason:
        pytest.skip(reason)
    mesh = make_relay_mesh(tmp_path / "coord", ("alpha", "bravo", "mallory"))
    with Lab(prefix="rly") as lab:
        rl = RelayLab(lab, mesh)
        rl.relay_node = lab.public_host("relay")
        yield rl


def test_two_devices_behind_symmetric_nats_ping_through_the_relay_and_survive_a_restart(
        relay_lab: RelayLab) -> None:
    lab = relay_lab.lab
    a_host, b_host = lab.host("a"), lab.host("b")
    lab.nat_router("nata", rules.SYMMETRIC, [a_host])
    lab.nat_router("natb", rules.SYMMETRIC, [b_host])
    relay_lab.start_relay()
    a = relay_lab.device(a_host, "alpha", 1)
    b = relay_lab.device(b_host, "bravo", 2)
    relay_lab.start_tool(a, [b])
    relay_lab.start_tool(b, [a])
    relay_lab.wg_peer(a, b, relay_lab.endpoint(a, b), keepalive=5)
    relay_lab.wg_peer(b, a, relay_lab.endpoint(b, a), keepalive=5)
    assert relay_lab.endpoint(a, b).startswith("127.0.0.1:")

    poll(lambda: relay_lab.ping_ok(a, b), "ping a -> b through the relay", 15)
    assert relay_lab.ping_ok(b, a)
    metrics = relay_lab.metrics()
    assert "meshctl_relay_clients 2" in metrics
    packets = int(metrics.split('meshctl_relay_packets_total{direction="out"} ')[1].split()[0])
    assert packets > 0
    log = lab.log_of(relay_lab.relay_proc)  # type: ignore[arg-type]
    assert "connected: alpha" in log and "connected: bravo" in log

    # Kill the relay and start it again: traffic resumes within 5 s of the relay being ready.
    relay_lab.kill_relay()
    assert not relay_lab.ping_ok(a, b)
    ready = relay_lab.start_relay()
    deadline = ready + 15
    while not relay_lab.ping_ok(a, b, timeout_s=1):
        assert time.monotonic() < deadline, "traffic never resumed after the relay restart"
    resumed = time.monotonic() - ready
    print(f"relay restart: traffic resumed {resumed:.2f} s after the new relay was ready")
    assert resumed < RESUME_LIMIT_S, f"traffic resumed {resumed:.1f} s after the relay restart"
    assert relay_lab.tool_state(a)["connects"] == 2


def test_non_member_and_revoked_member_cannot_use_the_relay(relay_lab: RelayLab, tmp_path: Path) -> None:
    lab = relay_lab.lab
    a_host, m_host = lab.host("a"), lab.host("m")
    lab.attach_to_internet(a_host)
    lab.attach_to_internet(m_host)
    relay_lab.start_relay("--sync-interval", "1")
    a = relay_lab.device(a_host, "alpha", 1)
    m = relay_lab.device(m_host, "mallory", 3)
    relay_lab.start_tool(a, [m])
    relay_lab.start_tool(m, [a])
    relay_lab.wg_peer(a, m, relay_lab.endpoint(a, m))
    relay_lab.wg_peer(m, a, relay_lab.endpoint(m, a))
    poll(lambda: relay_lab.ping_ok(m, a), "ping through the relay before the revocation", 15)

    relay_lab.mesh.revoke("mallory")
    relay_lab.mesh.commit("revoke mallory")
    poll(lambda: relay_lab.tool_state(m).get("connected") is False, "mallory dropped by the relay", 15)
    assert not relay_lab.ping_ok(m, a, timeout_s=2)
    log = lab.log_of(relay_lab.relay_proc)  # type: ignore[arg-type]
    assert "disconnected: mallory" in log and "revoked" in log
    # A device that was never in the repository is refused too.
    from relay_support import new_device

    relay_lab.mesh.devices["stranger"] = new_device()
    s_host = lab.host("s")
    lab.attach_to_internet(s_host)
    s = relay_lab.device(s_host, "stranger", 4)
    with pytest.raises(Exception, match="not ready"):
        relay_lab.start_tool(s, [a])
    assert "meshctl_relay_clients 1" in relay_lab.metrics()


def test_node_without_udp_uses_the_tls_fallback(relay_lab: RelayLab, tmp_path: Path) -> None:
    from relay_support import self_signed_cert

    lab = relay_lab.lab
    a_host, b_host = lab.host("a"), lab.host("b")
    nat_a = lab.nat_router("nata", rules.PORT_RESTRICTED, [a_host])
    lab.attach_to_internet(b_host)
    assert relay_lab.relay_node is not None
    cert, key = self_signed_cert(tmp_path, str(relay_lab.relay_node.ipv4))
    relay_lab.start_relay("--tls-cert", str(cert), "--tls-key", str(key))
    lab.block_udp(nat_a)  # a's network lets no UDP out: only TCP reaches the relay
    a = relay_lab.device(a_host, "alpha", 1)
    b = relay_lab.device(b_host, "bravo", 2)
    relay_lab.start_tool(a, [b], "--tls-ca", str(cert))
    relay_lab.start_tool(b, [a], "--tls-ca", str(cert))
    assert relay_lab.tool_state(a)["transport"] == "tcp"
    assert relay_lab.tool_state(b)["transport"] == "udp"
    relay_lab.wg_peer(a, b, relay_lab.endpoint(a, b), keepalive=5)
    relay_lab.wg_peer(b, a, relay_lab.endpoint(b, a), keepalive=5)
    poll(lambda: relay_lab.ping_ok(a, b), "ping a (TLS) -> b (UDP) through the relay", 15)
    assert relay_lab.ping_ok(b, a)


_ = RelayMesh
