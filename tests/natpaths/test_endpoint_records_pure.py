"""The agent's use of endpoint records (agent/paths/record.py helpers) and what `status` says about
them, about the own record and about each listed relay (agent/status.py). Pure, milliseconds."""

from __future__ import annotations

import ipaddress
import time

from meshctl.agent.paths.record import record_candidates, record_text, unproven_candidate
from meshctl.agent.status import build_status, record_status, relays_status, render_status
from meshctl.coord.endpoint_publish import Published
from meshctl.coord.endpoint_record import EndpointRecord
from meshctl.coord.endpoint_verify import FRESH_FOR_S, EndpointView
from meshctl.coord.netmap import NetMap, NetworkSettings, Peer, Relay
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.wg.config import DeviceState, PeerState

V4 = ipaddress.IPv4Address
NOW = int(time.time())
WG, DISCO = NodePrivate.generate().public(), DiscoPrivate.generate().public()
LAN = [ipaddress.IPv4Interface("10.0.1.10/24")]


def rec(candidates: tuple[str, ...], at: int = NOW, agent: bool = True) -> EndpointRecord:
    return EndpointRecord("ab" * 16, "b", at * 1000, at, candidates, DISCO, WG, agent)


def test_fresh_candidates_for_the_members_keys_only_ipv4() -> None:
    r = rec(("203.0.113.7:51820", "[2001:db8::7]:51820", "10.0.1.20:51820"))
    assert record_candidates(r, WG, DISCO, NOW) == (parse_addr_port("203.0.113.7:51820"),
                                                    parse_addr_port("10.0.1.20:51820"))
    assert record_candidates(rec(("203.0.113.7:51820",), at=NOW - FRESH_FOR_S - 1), WG, DISCO, NOW) == ()
    assert record_candidates(r, NodePrivate.generate().public(), DISCO, NOW) == ()


def test_our_candidates_are_published_in_canonical_text() -> None:
    ours = (AddrPort(V4("203.0.113.7"), 51820), AddrPort(V4("10.0.1.10"), 51820),
            AddrPort(V4("0.0.0.0"), 51820), AddrPort(V4("203.0.113.7"), 51820))
    assert record_text(ours) == ("203.0.113.7:51820", "10.0.1.10:51820")


def test_a_peer_without_an_agent_is_reached_on_our_subnet_first() -> None:
    near, far = parse_addr_port("10.0.1.20:51820"), parse_addr_port("203.0.113.9:51820")
    assert unproven_candidate((far, near), LAN) == "10.0.1.20:51820"
    assert unproven_candidate((far,), LAN) == "203.0.113.9:51820"
    assert unproven_candidate((), LAN) is None


def peer(name: str, wg: object = WG, disco: object = DISCO) -> Peer:
    return Peer(name, SigningKey.generate().public(), wg, disco, (V4("100.64.0.2"),))  # type: ignore[arg-type]


def netmap(relays: tuple[Relay, ...] = ()) -> NetMap:
    me = Peer("a", SigningKey.generate().public(), NodePrivate.generate().public(),
              DiscoPrivate.generate().public(), (V4("100.64.0.1"),))
    net = NetworkSettings("ab" * 16, "acme", ipaddress.IPv4Network("100.64.0.0/10"),
                          ipaddress.IPv6Network("fd7a:115c:a1e0::/48"), "acme.mesh")
    return NetMap(net, 3, NOW + 86400, "0" * 64, (me, peer("b")), relays, self_name="a")


def test_each_peers_record_as_status_shows_it() -> None:
    b = peer("b")
    assert record_status(None, b, NOW) is None
    assert record_status(EndpointView({"b": rec(("1.2.3.4:5",))}), b, NOW) == "fresh"
    assert record_status(EndpointView({"b": rec((), at=NOW - 3600)}), b, NOW).startswith("stale")
    assert record_status(EndpointView({}, {"b": "rolled back: counter 1 is below 2"}), b, NOW) == \
        "refused: rolled back: counter 1 is below 2"
    other = peer("b", wg=NodePrivate.generate().public())
    assert record_status(EndpointView({"b": rec(())}), other, NOW) == "made for other keys than the member's"


def test_each_listed_relay_with_its_state_and_last_error() -> None:
    nm = netmap((Relay("lab", "203.0.113.5:3340"), Relay("r2", "203.0.113.6:3340")))
    agent = {"relays": [{"name": "lab", "connected": False, "transport": None, "latency_ms": None,
                         "last_error": "it introduces itself as 'relay'"}]}
    got = relays_status(nm, agent)
    assert got[0] == {"name": "lab", "address": "203.0.113.5:3340", "state": "not connected", "transport": None,
                      "latency_ms": None, "last_error": "it introduces itself as 'relay'"}
    assert got[1]["state"] == "not started"
    assert relays_status(nm, None)[0]["state"] == "unknown (no agent running)"
    doc = build_status(nm, None, {}, NOW, {}, NOW, agent, EndpointView(), Published(refused="x: push refused"))
    text = render_status(doc, NOW)
    assert "relay lab 203.0.113.5:3340: not connected: it introduces itself as 'relay'" in text
    assert "endpoint record: not published: no push rights (x: push refused)" in text
    assert doc["self"]["endpoint_record"]["push_rights"] is False


def test_the_tunnel_of_a_peer_without_an_agent_is_its_path() -> None:
    """A peer with no agent (cron) answers no disco: the agent says none, WireGuard says direct.
    For a peer that runs an agent the live tunnel is its path too (issue 17: a live handshake never
    shows none), but only the agent's own pongs prove it: latency_ms stays empty without them."""
    nm = netmap()
    agentless = EndpointView({"b": rec(("203.0.113.11:51820",), agent=False)})
    none = {"paths": {"b": {"path": "none", "endpoint": None}}}
    device = DeviceState(None, 51820, (PeerState(WG, "203.0.113.11:51820", (), 25, NOW - 5, 100, 200),))
    doc = build_status(nm, device, {}, NOW, {}, NOW, none, agentless)
    assert doc["peers"][0]["path"] == "direct" and doc["peers"][0]["endpoint"] == "203.0.113.11:51820"
    with_agent = build_status(nm, device, {}, NOW, {}, NOW, none, EndpointView({"b": rec(())}))["peers"][0]
    assert with_agent["path"] == "direct" and with_agent["latency_ms"] is None
    stale = DeviceState(None, 51820, (PeerState(WG, "203.0.113.11:51820", (), 25, NOW - 3600, 100, 200),))
    assert build_status(nm, stale, {}, NOW, {}, NOW, none, agentless)["peers"][0]["path"] == "none"
