"""The pure policy of meshctl/agent/relaying.py: which endpoint WireGuard gets, which relay
carries a packet, which relay status names."""

from __future__ import annotations

from meshctl.agent.relaying import (
    HEARD_FRESH_S,
    RELAY_NON_INITIATOR_DELAY_S,
    decide_endpoint,
    offer_proxy,
    relay_for_status,
    relay_key,
    route_targets,
    usable_relays,
)
from meshctl.coord.netmap import Relay

DIRECT = "203.0.113.7:51820"
PROXY = "127.0.0.1:40001"


def test_a_proven_direct_path_wins_over_the_relay() -> None:
    for initiator in (True, False):
        assert decide_endpoint(DIRECT, PROXY, None, initiator, 0.0) == DIRECT
        assert decide_endpoint(DIRECT, PROXY, "198.51.100.9:1", initiator, 99.0) == DIRECT


def test_without_relays_magic_decides_alone() -> None:
    assert decide_endpoint(None, None, None, True, 50.0) is None
    # Magic keeps the last direct endpoint after a path died: left as it is
    assert decide_endpoint(None, None, DIRECT, False, 50.0) == DIRECT


def test_the_relay_is_used_at_once_by_the_initiator() -> None:
    assert decide_endpoint(None, PROXY, None, True, 0.0) == PROXY


def test_the_other_side_waits_a_moment_then_uses_the_relay() -> None:
    assert decide_endpoint(None, PROXY, None, False, 0.0) is None
    assert decide_endpoint(None, PROXY, None, False, RELAY_NON_INITIATOR_DELAY_S - 0.01) is None
    assert decide_endpoint(None, PROXY, None, False, RELAY_NON_INITIATOR_DELAY_S) == PROXY


def test_a_dead_direct_path_falls_back_to_the_relay() -> None:
    # Magic's sticky endpoint of a dead path must not keep WireGuard off the relay
    assert decide_endpoint(None, PROXY, DIRECT, True, 100.0) == PROXY
    assert decide_endpoint(None, PROXY, DIRECT, False, 100.0) == PROXY


def test_route_to_the_relay_the_peer_was_heard_on() -> None:
    assert route_targets("r2", 1.0, ["r1", "r2"]) == ["r2"]


def test_route_to_every_relay_when_unheard_stale_or_gone() -> None:
    assert route_targets(None, None, ["r1", "r2"]) == ["r1", "r2"]
    assert route_targets("r2", HEARD_FRESH_S + 1, ["r1", "r2"]) == ["r1", "r2"]
    assert route_targets("r3", 0.5, ["r1", "r2"]) == ["r1", "r2"]  # r3 disconnected
    assert route_targets("r1", 0.5, []) == []


def test_status_names_where_the_peer_was_heard_else_home() -> None:
    assert relay_for_status("r2", 1.0, "r1") == "r2"
    assert relay_for_status("r2", HEARD_FRESH_S + 1, "r1") == "r1"
    assert relay_for_status(None, None, "r1") == "r1"
    assert relay_for_status(None, None, None) is None


def test_a_relay_is_replaced_when_its_address_or_key_changes() -> None:
    from meshctl.keys import SigningKey

    key = SigningKey.generate().public()
    base = Relay("r1", "198.51.100.7:3340")
    assert relay_key(base) == relay_key(Relay("r1", "198.51.100.7:3340"))
    assert relay_key(base) != relay_key(Relay("r1", "198.51.100.8:3340"))
    assert relay_key(base) != relay_key(Relay("r1", "198.51.100.7:3340", key))


def test_a_relay_listed_without_its_identity_key_is_never_used() -> None:
    """Nobody else can answer for a relay: a node uses only relays it can check at login."""
    from meshctl.keys import SigningKey

    keyed = Relay("r1", "198.51.100.7:3340", SigningKey.generate().public())
    assert usable_relays([Relay("r0", "198.51.100.6:3340"), keyed]) == [keyed]


def test_a_peer_without_an_agent_gets_its_published_endpoint_over_the_relay() -> None:
    from meshctl.agent.relaying import decide_endpoint

    # No direct path, a relay is listed, but the peer never spoke disco: only its endpoint can work.
    assert decide_endpoint(None, "127.0.0.1:40000", None, True, 30.0, "198.51.100.7:51820") == "198.51.100.7:51820"
    # A proven direct path still wins.
    assert decide_endpoint("203.0.113.9:51820", "127.0.0.1:40000", None, True, 30.0, "198.51.100.7:51820") \
        == "203.0.113.9:51820"


def test_the_proxy_is_first_offered_once_a_relay_is_connected() -> None:
    # a first handshake sent into an unreachable relay would cost WireGuard's 5 s retry
    assert offer_proxy(True, relay_up=False, already_proxied=False) is False
    assert offer_proxy(True, relay_up=True, already_proxied=False) is True
    # once given, it stays while the relay is down (the flow resumes when it is back)
    assert offer_proxy(True, relay_up=False, already_proxied=True) is True
    assert offer_proxy(False, relay_up=True, already_proxied=True) is False
