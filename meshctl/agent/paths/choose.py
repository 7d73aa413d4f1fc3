"""Which endpoint WireGuard uses for one peer: a pure function of what is known about it.

    choose_endpoint(facts, now) -> Choice(via, endpoint, recheck_at)

In order of preference (each rule is a case an end-to-end test found):
1. A direct path nat/paths.py proved. The designated initiator writes it at once; the other
   side waits NON_INITIATOR_DELAY_S, by which time the initiator's handshake has usually
   arrived and WireGuard has roamed there by itself (two handshakes at once cost WireGuard's
   5 s retry).
2. A published (static) endpoint that needs no proof: one in a subnet we are connected to (no
   NAT between, nothing to poison), at once; that of a peer whose endpoint record says it runs
   no agent (`meshctl sync` from cron published it), at once: its static endpoint, else one of
   the record's candidates (ours first); or that of a peer which never spoke disco for
   STATIC_FALLBACK_AFTER_S and has no such record (no push rights): it may run no agent, so
   no probe can ever prove a path to it, and WireGuard's own handshake is the only way in.
   Never for a peer whose fresh record says its agent runs: that agent's probes will prove a
   path, and WireGuard's full-TTL handshakes to an unproven endpoint only poison. Not
   sooner: two agents behind bare masquerade NATs can stay silent for a while (the recovery
   rounds of paths.py), and a full-TTL handshake would poison the other NAT's conntrack again.
   A peer without an agent never sends first, so nothing of it can be poisoned.
3. The relay, when one is listed and connected (or the peer had its proxy already: it stays
   through a relay restart, and the flow resumes when a client reconnects): the relay's
   channel port once the channel is READY in this relayed spell, else the loopback proxy.
   The initiator at once, the other side RELAY_NON_INITIATOR_DELAY_S after the peer appeared.
4. Otherwise the last direct endpoint written, kept: it may still work, and WireGuard cannot
   unset an endpoint anyway. With none, WireGuard is left alone (it roams to the peer).
A static endpoint is never used before a proof (the conntrack poisoning of DESIGN.md), and
a relay never before one is reachable (WireGuard's first handshake into it would be lost,
and it retries only 5 s later, even when a direct path appeared meanwhile).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

NON_INITIATOR_DELAY_S: Final = 1.0
RELAY_NON_INITIATOR_DELAY_S: Final = 1.0
STATIC_FALLBACK_AFTER_S: Final = 150.0  # past the recovery rounds' worst case (about 113 s)


class Via(enum.Enum):
    DIRECT = "direct"  # a proven path (or the last one written, kept)
    STATIC = "static"  # the peer's published endpoint
    RELAY = "relay"  # the loopback proxy to the relay
    CHANNEL = "channel"  # the relay's channel port for this pair
    NONE = "none"  # WireGuard is left alone

    @property
    def path(self) -> str:
        """The status document's word for it: direct, relay or none."""
        if self in (Via.DIRECT, Via.STATIC):
            return "direct"
        return "relay" if self in (Via.RELAY, Via.CHANNEL) else "none"


@dataclass(frozen=True, slots=True)
class PeerFacts:
    """Everything choose_endpoint looks at, for one peer at one moment."""

    initiator: bool  # this side starts WireGuard's handshake (paths.is_designated_initiator)
    first_seen: float  # when the peer entered the map
    direct: str | None = None  # the direct path nat/paths.py proved, "IP:PORT"
    direct_since: float | None = None  # when it was proved
    last_direct: str | None = None  # the direct endpoint last written for this peer
    on_link_static: str | None = None  # a literal static endpoint in one of our connected subnets
    no_agent: str | None = None  # its endpoint record says it runs no agent: its endpoint to use at once
    static: str | None = None  # its first static endpoint, resolved
    heard: bool = False  # it spoke disco (directly or relayed): it runs an agent
    agent_record: bool = False  # its fresh endpoint record says an agent runs there
    relays_listed: bool = False
    relay_up: bool = False  # a relay client is connected
    proxied: bool = False  # it had its relay proxy before
    channel: str | None = None  # its channel's endpoint, READY in this relayed spell


@dataclass(frozen=True, slots=True)
class Choice:
    via: Via
    endpoint: str | None = None  # None for RELAY (the shell's proxy endpoint) and NONE
    recheck_at: float | None = None  # the choice may change then without any other event


def _static(peer: PeerFacts, now: float) -> tuple[str | None, float | None]:
    """Rule 2: the static endpoint usable now, or when it may become usable."""
    if peer.on_link_static is not None:
        return peer.on_link_static, None
    if peer.no_agent is not None:
        return peer.no_agent, None
    if peer.heard or peer.agent_record or peer.static is None:
        return None, None
    due = peer.first_seen + STATIC_FALLBACK_AFTER_S
    return (peer.static, None) if now >= due else (None, due)


def choose_endpoint(peer: PeerFacts, now: float) -> Choice:
    """The endpoint WireGuard should use for `peer` now (see the module docstring)."""
    rechecks: list[float] = []
    if peer.direct is not None:
        due = peer.direct_since + NON_INITIATOR_DELAY_S if peer.direct_since is not None else now
        if peer.initiator or now >= due:
            return Choice(Via.DIRECT, peer.direct)
        rechecks.append(due)
    static, static_due = _static(peer, now)
    if static is not None:
        return Choice(Via.STATIC, static, min(rechecks, default=None))
    if static_due is not None:
        rechecks.append(static_due)
    if peer.relays_listed and (peer.relay_up or peer.proxied):
        relay_due = peer.first_seen + RELAY_NON_INITIATOR_DELAY_S
        if peer.initiator or now >= relay_due:
            if peer.channel is not None:
                return Choice(Via.CHANNEL, peer.channel, min(rechecks, default=None))
            return Choice(Via.RELAY, None, min(rechecks, default=None))
        rechecks.append(relay_due)
    recheck = min(rechecks, default=None)
    if peer.last_direct is not None:
        return Choice(Via.DIRECT, peer.last_direct, recheck)
    return Choice(Via.NONE, None, recheck)
