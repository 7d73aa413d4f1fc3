"""The status document tells the truth about paths (pure: build_status)."""

from __future__ import annotations

from test_desired import NOW, netmap

from meshctl.agent.status import build_status
from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceState, PeerState

NETMAP = netmap()


def peers_of(device: DeviceState, agent: dict[str, object] | None) -> dict[str, dict[str, object]]:
    doc = build_status(NETMAP, device, {"backend": "userspace"}, NOW, {}, NOW, agent)
    return {p["name"]: p for p in doc["peers"]}


def device(endpoint_b: str | None, handshake_b: int | None) -> DeviceState:
    b, c = NETMAP.peer("b"), NETMAP.peer("c")
    assert b is not None and c is not None
    return DeviceState(None, 51820, (PeerState(b.wg_public_key, endpoint_b, (), 25, handshake_b),
                                      PeerState(c.wg_public_key)))


def test_a_live_handshake_never_shows_path_none() -> None:
    """The engine may know no path (a restarted agent, or none runs): WireGuard's live tunnel has one."""
    for agent in (None, {"paths": {"b": {"path": "none"}}}):
        got = peers_of(device("192.0.2.2:51820", NOW - 5), agent)
        assert got["b"]["path"] == "direct" and got["b"]["endpoint"] == "192.0.2.2:51820"
        assert got["c"]["path"] == "none"  # never a handshake: no path indeed
    relayed = peers_of(device("127.0.0.1:40001", NOW - 5), {"paths": {"b": {"path": "none"}}})
    assert relayed["b"]["path"] == "relay"  # WireGuard talks to the relay proxy
    # the proof of a direct path (a pong's latency) is said apart from where the tunnel goes
    assert peers_of(device("192.0.2.2:51820", NOW - 5), None)["b"]["latency_ms"] is None
    proven = {"paths": {"b": {"path": "direct", "endpoint": "192.0.2.2:51820", "latency_ms": 1.5}}}
    assert peers_of(device("192.0.2.2:51820", NOW - 5), proven)["b"]["latency_ms"] == 1.5


def test_a_stale_handshake_says_what_the_engine_says() -> None:
    stale = NOW - HANDSHAKE_FRESH_S - 1
    assert peers_of(device("192.0.2.2:51820", stale), None)["b"]["path"] == "none"
    engine = {"paths": {"b": {"path": "relay", "relay": "r1", "relay_channel": "198.51.100.1:40002"}}}
    got = peers_of(device("198.51.100.1:40002", stale), engine)["b"]
    assert (got["path"], got["relay"], got["relay_channel"], got["endpoint"]) == (
        "relay", "r1", "198.51.100.1:40002", None)
