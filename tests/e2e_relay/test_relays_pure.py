"""The pure parts of meshctl/agent/paths/relays.py: which relay carries a packet, which relay
status names, when a listed relay is another one. (Which endpoint WireGuard gets, relay or
not, is tests/unit/test_choose_endpoint.py.)"""

from __future__ import annotations

from meshctl.agent.paths.relays import HEARD_FRESH_S, relay_for_status, relay_key, route_targets, usable_relays
from meshctl.coord.netmap import Relay


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
