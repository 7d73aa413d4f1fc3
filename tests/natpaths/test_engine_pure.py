"""The pure parts of the agent's path engine around choose_endpoint (no root, milliseconds)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshctl.agent.paths.choose import Choice, Via
from meshctl.agent.paths.engine import describe_ping, path_status
from meshctl.agent.paths.own import nat_status, own_candidates
from meshctl.agent.paths.record import PeerRecord, literal_endpoints, on_link
from meshctl.cli.app import build_app
from meshctl.coord.netmap import Peer
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey
from meshctl.nat.addr import AddrPort
from meshctl.nat.netcheck import NetcheckReport

V4 = ipaddress.IPv4Address
EP = AddrPort(V4("203.0.113.11"), 51820)


def peer(endpoints: tuple[str, ...]) -> Peer:
    return Peer("b", SigningKey.generate().public(), NodePrivate.generate().public(),
                DiscoPrivate.generate().public(), (V4("100.64.0.2"),), endpoints=endpoints)


def report(preferred: AddrPort | None, varies: bool | None) -> NetcheckReport:
    return NetcheckReport(preferred is not None, (), varies, preferred)


def test_own_candidates_put_the_stun_mapping_first_and_skip_loopback() -> None:
    got = own_candidates([V4("10.0.1.10"), V4("127.0.0.1"), V4("203.0.113.10")], 51820,
                         report(AddrPort(V4("203.0.113.10"), 51820), False))
    assert got == (AddrPort(V4("203.0.113.10"), 51820), AddrPort(V4("10.0.1.10"), 51820))


def test_own_candidates_without_netcheck_are_the_local_addresses() -> None:
    assert own_candidates([V4("10.0.1.10")], 4242, None) == (AddrPort(V4("10.0.1.10"), 4242),)


def test_literal_endpoints_keep_ip_port_and_skip_names() -> None:
    p = peer(("203.0.113.11:51820", "host.example:51820", "[2001:db8::1]:51820"))
    assert literal_endpoints(p) == (EP, AddrPort(ipaddress.ip_address("2001:db8::1"), 51820))


@given(st.lists(st.text(max_size=40), max_size=5))
def test_literal_endpoints_never_raise(texts: list[str]) -> None:
    assert all(isinstance(a, AddrPort) for a in literal_endpoints(peer(tuple(texts))))


def test_on_link_is_a_connected_subnet_other_than_our_own_address() -> None:
    lan = [ipaddress.IPv4Interface("192.168.7.10/24"), ipaddress.IPv4Interface("10.0.0.2/32")]
    assert on_link(AddrPort(ipaddress.IPv4Address("192.168.7.20"), 51820), lan)
    assert not on_link(AddrPort(ipaddress.IPv4Address("192.168.8.20"), 51820), lan)  # behind a router
    assert not on_link(AddrPort(ipaddress.IPv4Address("192.168.7.10"), 51820), lan)  # ourselves
    assert not on_link(AddrPort(ipaddress.IPv4Address("10.0.0.2"), 51820), lan)  # a /32 has no neighbours
    assert not on_link(AddrPort(ipaddress.IPv4Address("192.168.7.20"), 51820), [])


def test_path_status_says_where_wireguard_sends() -> None:
    rec = PeerRecord.of(peer(()), 0.0)
    rec.choice = Choice(Via.DIRECT, "203.0.113.11:51820")
    assert path_status(rec, "r1") == {"path": "direct", "endpoint": "203.0.113.11:51820", "relay": None,
                                      "relay_channel": None, "latency_ms": None}
    rec.choice = Choice(Via.STATIC, "203.0.113.11:51820")
    assert path_status(rec, "r1")["path"] == "direct"
    rec.choice = Choice(Via.RELAY)
    assert path_status(rec, "r1") == {"path": "relay", "endpoint": None, "relay": "r1", "relay_channel": None,
                                      "latency_ms": None}
    rec.choice = Choice(Via.CHANNEL, "198.51.100.1:40002")
    assert path_status(rec, "r1")["relay_channel"] == "198.51.100.1:40002"
    rec.choice = Choice(Via.NONE)
    assert path_status(rec, None) == {"path": "none", "endpoint": None, "relay": None, "relay_channel": None,
                                      "latency_ms": None}


def test_nat_status_summarises_the_report() -> None:
    assert nat_status(None)["udp"] is None
    assert nat_status(report(EP, True)) == {
        "udp": True, "mapping_varies_by_dest": True, "preferred_endpoint": "203.0.113.11:51820"}


def test_describe_ping_like_tailscale() -> None:
    assert describe_ping({"ok": True, "peer": "b", "ip": "100.64.0.2", "path": "direct",
                          "endpoint": "203.0.113.11:51820",
                          "relay": None, "latency_ms": 1.234}) == \
        "pong from b (100.64.0.2) via direct 203.0.113.11:51820 in 1.2ms"
    assert describe_ping({"ok": True, "peer": "b", "ip": None, "path": "relay", "relay": "r1", "latency_ms": 20}) == \
        "pong from b via relay r1 in 20.0ms"
    assert describe_ping({"ok": True, "peer": "b", "ip": None, "path": "relay", "relay": "r1",
                          "relay_channel": "198.51.100.1:40002", "latency_ms": 2}) == \
        "pong from b via relay r1 in 2.0ms"


def test_ping_without_an_agent_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["--state-dir", str(tmp_path), "ping", "b"])
    assert result.exit_code == 1
    assert "meshctl: the agent is not running" in result.output
