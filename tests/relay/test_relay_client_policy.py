"""Reconnect backoff and home-relay choice (no sockets)."""

from __future__ import annotations

from relay_support import NETWORK_ID

from meshctl.keys import NodePrivate, SigningKey
from meshctl.relay.client import (
    HOME_HYSTERESIS_S,
    RECONNECT_INITIAL_S,
    RECONNECT_MAX_S,
    REFUSED_RETRY_S,
    RelayClient,
    RelayClientConfig,
    backoff_delay,
    choose_home,
    refused_delay,
)


def test_backoff_starts_at_zero_doubles_and_is_capped() -> None:
    assert backoff_delay(0) == 0.0
    assert backoff_delay(1, lambda: 1.0) == RECONNECT_INITIAL_S
    assert backoff_delay(2, lambda: 1.0) == 2 * RECONNECT_INITIAL_S
    assert backoff_delay(50, lambda: 1.0) == RECONNECT_MAX_S
    assert backoff_delay(50, lambda: 0.0) == RECONNECT_MAX_S / 2  # jitter: half to all of it


def test_refused_logins_are_retried_soon_then_ever_more_slowly() -> None:
    # a device approved a moment ago is admitted by the relay's next sync: retry within seconds
    assert [refused_delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, REFUSED_RETRY_S]
    assert refused_delay(1000) == REFUSED_RETRY_S


def client(latency: float | None, connected: bool = True) -> RelayClient:
    c = RelayClient(RelayClientConfig("127.0.0.1:1", NETWORK_ID), SigningKey.generate(),
                    NodePrivate.generate().public(), lambda s, d: None)
    c.latency_s = latency
    if connected:
        c._connected.set()
    return c


def test_choose_home_picks_the_fastest_connected_relay_with_hysteresis() -> None:
    a, b, down = client(0.030), client(0.025), client(0.001, connected=False)
    assert choose_home([]) is None
    assert choose_home([down]) is None
    assert choose_home([a, b, down]) is b
    # a stays home: b is faster, but by less than the hysteresis.
    assert 0.005 < HOME_HYSTERESIS_S
    assert choose_home([a, b], current=a) is a
    c = client(0.030 - HOME_HYSTERESIS_S - 0.005)
    assert choose_home([a, b, c], current=a) is c
    # A home that disconnected is replaced.
    a._connected.clear()
    assert choose_home([a, b], current=a) is b
