"""choose_endpoint: every case the end-to-end tests found, as one table (pure, milliseconds)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.agent.paths.choose import (
    NON_INITIATOR_DELAY_S,
    RELAY_NON_INITIATOR_DELAY_S,
    STATIC_FALLBACK_AFTER_S,
    Choice,
    PeerFacts,
    Via,
    choose_endpoint,
)

DIRECT = "203.0.113.7:51820"
OLD = "203.0.113.9:41641"  # a direct endpoint written before; that path died since
ONLINK = "192.168.7.20:51820"
STATIC = "198.51.100.7:51820"
CHANNEL = "198.51.100.1:40002"
RECORDED = "198.51.100.8:51820"  # from a peer's endpoint record saying no agent runs there (cron)
T0 = 1000.0  # the peer entered the map

RELAY_UP = {"relays_listed": True, "relay_up": True}


def facts(**kw: object) -> PeerFacts:
    return PeerFacts(**{"initiator": True, "first_seen": T0, **kw})  # type: ignore[arg-type]


# (case, facts, now, expected choice)
CASES = [
    # 1. a proven direct path: the initiator writes it at once, the other side a moment later
    ("direct, initiator", facts(direct=DIRECT, direct_since=T0 + 5), T0 + 5, Choice(Via.DIRECT, DIRECT)),
    ("direct, other side waits", facts(initiator=False, direct=DIRECT, direct_since=T0 + 5), T0 + 5,
     Choice(Via.NONE, None, T0 + 5 + NON_INITIATOR_DELAY_S)),
    ("direct, other side after the wait", facts(initiator=False, direct=DIRECT, direct_since=T0 + 5),
     T0 + 5 + NON_INITIATOR_DELAY_S, Choice(Via.DIRECT, DIRECT)),
    ("direct, other side waits on the relay", facts(initiator=False, direct=DIRECT, direct_since=T0 + 50, **RELAY_UP),
     T0 + 50, Choice(Via.RELAY, None, T0 + 50 + NON_INITIATOR_DELAY_S)),
    ("direct wins over the relay's channel", facts(direct=DIRECT, direct_since=T0, channel=CHANNEL, **RELAY_UP),
     T0 + 60, Choice(Via.DIRECT, DIRECT)),
    ("direct wins over a published endpoint", facts(direct=DIRECT, direct_since=T0, static=STATIC),
     T0 + STATIC_FALLBACK_AFTER_S, Choice(Via.DIRECT, DIRECT)),
    ("direct wins over an on-link endpoint", facts(direct=DIRECT, direct_since=T0, on_link_static=ONLINK),
     T0, Choice(Via.DIRECT, DIRECT)),
    # 2. nothing known: WireGuard is left alone; a dead path's endpoint is kept when no relay helps
    ("nothing at all", facts(), T0, Choice(Via.NONE)),
    ("no relay: the dead path's endpoint is kept", facts(last_direct=OLD), T0 + 60, Choice(Via.DIRECT, OLD)),
    # 3. the relay
    ("relay, initiator at once", facts(**RELAY_UP), T0, Choice(Via.RELAY)),
    ("relay, other side waits", facts(initiator=False, **RELAY_UP), T0,
     Choice(Via.NONE, None, T0 + RELAY_NON_INITIATOR_DELAY_S)),
    ("relay, other side after the wait", facts(initiator=False, **RELAY_UP), T0 + RELAY_NON_INITIATOR_DELAY_S,
     Choice(Via.RELAY)),
    ("a dead direct path falls back to the relay", facts(initiator=False, last_direct=OLD, **RELAY_UP), T0 + 60,
     Choice(Via.RELAY)),
    ("a channel READY in this relayed spell", facts(channel=CHANNEL, **RELAY_UP), T0 + 60,
     Choice(Via.CHANNEL, CHANNEL)),
    ("a relay listed but never reached: no first handshake into it", facts(relays_listed=True), T0 + 60,
     Choice(Via.NONE)),
    ("... and the dead path's endpoint meanwhile", facts(relays_listed=True, last_direct=OLD), T0 + 60,
     Choice(Via.DIRECT, OLD)),
    ("a proxied peer keeps its proxy while the relay restarts", facts(relays_listed=True, proxied=True), T0 + 60,
     Choice(Via.RELAY)),
    ("no relay listed any more", facts(proxied=True), T0 + 60, Choice(Via.NONE)),
    # 4. published endpoints
    ("on our subnet: at once, even before a probe", facts(initiator=False, on_link_static=ONLINK), T0,
     Choice(Via.STATIC, ONLINK)),
    ("on our subnet, before the relay", facts(on_link_static=ONLINK, **RELAY_UP), T0,
     Choice(Via.STATIC, ONLINK)),
    ("behind NATs, silent peer: not yet (conntrack poisoning)", facts(static=STATIC), T0 + 10,
     Choice(Via.NONE, None, T0 + STATIC_FALLBACK_AFTER_S)),
    ("a peer without an agent gets its published endpoint", facts(static=STATIC), T0 + STATIC_FALLBACK_AFTER_S,
     Choice(Via.STATIC, STATIC)),
    ("... over a relay too (it is on none)", facts(static=STATIC, **RELAY_UP), T0 + STATIC_FALLBACK_AFTER_S,
     Choice(Via.STATIC, STATIC)),
    ("... which meanwhile carries what it can", facts(static=STATIC, **RELAY_UP), T0 + 10,
     Choice(Via.RELAY, None, T0 + STATIC_FALLBACK_AFTER_S)),
    ("a peer that spoke disco runs an agent: never its published endpoint", facts(static=STATIC, heard=True),
     T0 + 10 * STATIC_FALLBACK_AFTER_S, Choice(Via.NONE)),
    # two agents behind bare masquerades, silent in the recovery rounds past the fallback's wait: a
    # full-TTL handshake to the unproven endpoint would poison the other NAT (and say "direct")
    ("a fresh record says its agent runs: never its published endpoint, before any disco",
     facts(static=STATIC, agent_record=True), T0 + 10 * STATIC_FALLBACK_AFTER_S, Choice(Via.NONE)),
    # 5. endpoint records through the git host: a record saying no agent runs there (cron sync)
    ("its record says no agent: its endpoint at once, no 150 s wait", facts(initiator=False, no_agent=STATIC,
     static=STATIC), T0, Choice(Via.STATIC, STATIC)),
    ("... a record candidate when it lists no static endpoint", facts(no_agent=RECORDED), T0,
     Choice(Via.STATIC, RECORDED)),
    ("... before the relay", facts(no_agent=RECORDED, **RELAY_UP), T0, Choice(Via.STATIC, RECORDED)),
    ("... but on our subnet first", facts(no_agent=RECORDED, on_link_static=ONLINK), T0,
     Choice(Via.STATIC, ONLINK)),
    ("... and a proven direct path before all", facts(no_agent=RECORDED, direct=DIRECT, direct_since=T0), T0,
     Choice(Via.DIRECT, DIRECT)),
]


@pytest.mark.parametrize(("case", "peer", "now", "expected"), CASES, ids=[c[0] for c in CASES])
def test_choose_endpoint(case: str, peer: PeerFacts, now: float, expected: Choice) -> None:
    assert choose_endpoint(peer, now) == expected, case


def test_the_status_words() -> None:
    assert {v: v.path for v in Via} == {Via.DIRECT: "direct", Via.STATIC: "direct", Via.RELAY: "relay",
                                        Via.CHANNEL: "relay", Via.NONE: "none"}


endpoints = st.sampled_from([None, DIRECT, OLD, STATIC])


@given(st.builds(PeerFacts, initiator=st.booleans(), first_seen=st.floats(0, 1e6), direct=endpoints,
                 direct_since=st.none() | st.floats(0, 1e6), last_direct=endpoints,
                 on_link_static=st.sampled_from([None, ONLINK]), no_agent=st.sampled_from([None, RECORDED, STATIC]),
                 static=endpoints, heard=st.booleans(),
                 relays_listed=st.booleans(), relay_up=st.booleans(), proxied=st.booleans(),
                 channel=st.sampled_from([None, CHANNEL])),
       st.floats(0, 2e6))
def test_invariants(peer: PeerFacts, now: float) -> None:
    choice = choose_endpoint(peer, now)
    assert choice.recheck_at is None or choice.recheck_at > now  # a recheck is in the future: no busy loop
    if choice.via is Via.STATIC:  # never a published endpoint without a reason it is safe
        assert choice.endpoint in (peer.on_link_static, peer.no_agent) or (
            not peer.heard and choice.endpoint == peer.static)
    if choice.via in (Via.RELAY, Via.CHANNEL):  # never a relay before one was reached
        assert peer.relays_listed and (peer.relay_up or peer.proxied)
    if choice.via is Via.CHANNEL:
        assert choice.endpoint == peer.channel
    if peer.direct is not None and peer.initiator:
        assert choice == Choice(Via.DIRECT, peer.direct)
    assert dataclasses.replace(peer) == peer  # facts are a value
