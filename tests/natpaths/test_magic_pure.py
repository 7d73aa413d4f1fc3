"""The pure parts of the agent's NAT-traversal engine (no root, milliseconds)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from meshctl.agent.magic import (
    NON_INITIATOR_DELAY_S,
    describe_ping,
    literal_endpoints,
    nat_status,
    on_link,
    own_candidates,
    path_status,
    wanted_override,
)
from meshctl.cli.app import build_app
from meshctl.coord.netmap import Peer
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey
from meshctl.nat.addr import AddrPort
from meshctl.nat.netcheck import NetcheckReport
from meshctl.nat.paths import Path as NatPath
from meshctl.nat.paths import PathKind

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


def test_path_status_shapes() -> None:
    assert path_status(NatPath(PathKind.DIRECT, EP, 0.0012)) == {
        "path": "direct", "endpoint": "203.0.113.11:51820", "relay": None, "latency_ms": 1.2}
    assert path_status(NatPath(PathKind.NONE)) == {
        "path": "none", "endpoint": None, "relay": None, "latency_ms": None}


def test_nat_status_summarises_the_report() -> None:
    assert nat_status(None)["udp"] is None
    assert nat_status(report(EP, True)) == {
        "udp": True, "mapping_varies_by_dest": True, "preferred_endpoint": "203.0.113.11:51820"}


def test_only_the_initiator_writes_the_endpoint_at_once() -> None:
    direct = NatPath(PathKind.DIRECT, EP, 0.001)
    assert wanted_override(direct, True, 10.0, 10.0) == "203.0.113.11:51820"
    assert wanted_override(direct, False, 10.0, 10.0) is None
    assert wanted_override(direct, False, 10.0, 10.0 + NON_INITIATOR_DELAY_S) == "203.0.113.11:51820"
    assert wanted_override(NatPath(PathKind.NONE), True, None, 10.0) is None


def test_describe_ping_like_tailscale() -> None:
    assert describe_ping({"ok": True, "peer": "b", "ip": "100.64.0.2", "endpoint": "203.0.113.11:51820",
                          "relay": None, "latency_ms": 1.234}) == \
        "pong from b (100.64.0.2) via direct 203.0.113.11:51820 in 1.2ms"
    assert describe_ping({"ok": True, "peer": "b", "ip": None, "relay": "r1", "latency_ms": 20}) == \
        "pong from b via relay r1 in 20.0ms"


def test_ping_without_an_agent_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["--state-dir", str(tmp_path), "ping", "b"])
    assert result.exit_code == 1
    assert "meshctl: the agent is not running" in result.output
