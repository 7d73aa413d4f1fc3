"""Recovery rounds against a model of two neighbouring bare Linux masquerade NATs (pure).

The model follows what `conntrack -L` showed on the lab's NAT routers:
- a new outbound flow gets the mapped port of the newest live flow from the same inside
  port, else the inside port itself, unless that (mapped port, remote) pair is taken by
  another entry: then a random port;
- an inbound packet with no entry leaves an unreplied entry (dropped locally): the
  conntrack poisoning;
- every entry expires NAT_UDP_TIMEOUT_S after its last packet, but Linux reaps an expired
  entry only when a lookup of its own tuple walks past it or the periodic GC sweeps (every
  GC_SWEEP_S here; the kernel's interval adapts, up to 60 s): until then it still lends its
  mapped port to new flows from the same inside port (nf_nat's find_appropriate_src), so a
  random port outlives its flow;
- a TTL-1 packet refreshes (or reaps) its own flow's entry and dies in the NAT; TTL 2 and
  more cross (the NATs are neighbours, as in the lab: a TTL-2 punch reaches the other NAT).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshctl.keys import NodePublic
from meshctl.nat import paths
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.disco import DiscoMessage
from meshctl.nat.paths import (
    HOLD_TTL,
    PathKind,
    PeerPaths,
    SendDisco,
    SendPunch,
    holds_round,
    recovery_round,
)

PORT = 51820
A_PUB = "203.0.113.10"
B_PUB = "203.0.113.11"
STUN = parse_addr_port("198.51.100.1:3478")
KEY_A = NodePublic(bytes([1] * 32))  # the lower key: the designated initiator
KEY_B = NodePublic(bytes([2] * 32))
TICK = 0.05
RESTUN_S = 20.0
GC_SWEEP_S = 60.0  # the kernel's longest interval


@dataclass
class Entry:
    inside: int | None  # None: an unreplied inbound entry (poison)
    mapped: int
    remote: AddrPort
    seen: float


@dataclass
class MasqueradeNat:
    public: str
    rng: random.Random
    entries: list[Entry] = field(default_factory=list)
    poisoned: int = 0  # unreplied inbound entries created
    randomised: int = 0  # flows that got a random port
    next_sweep: float | None = None

    def _sweep(self, now: float) -> None:
        if self.next_sweep is None:
            self.next_sweep = self.rng.uniform(0, GC_SWEEP_S)
        if now >= self.next_sweep:
            self.entries = [e for e in self.entries if now - e.seen < paths.NAT_UDP_TIMEOUT_S]
            self.next_sweep = now + GC_SWEEP_S

    def _lookup(self, match: Callable[[Entry], bool], now: float) -> Entry | None:
        """The live entry `match` picks; an expired one it walks past is reaped."""
        self._sweep(now)
        for e in list(self.entries):
            if match(e):
                if now - e.seen < paths.NAT_UDP_TIMEOUT_S:
                    return e
                self.entries.remove(e)
        return None

    def outbound(self, port: int, dst: AddrPort, ttl: int, now: float) -> AddrPort | None:
        """Our source address after the NAT, or None when the packet does not leave it."""
        e = self._lookup(lambda e: e.inside == port and e.remote == dst, now)
        if e is not None:
            e.seen = now
            return AddrPort(parse_addr_port(f"{self.public}:1").ip, e.mapped) if ttl >= 2 else None
        if ttl < 2:
            return None  # dropped by the forward path before source NAT: no entry
        taken = {(e.mapped, e.remote) for e in self.entries if now - e.seen < paths.NAT_UDP_TIMEOUT_S}
        lent = [e.mapped for e in reversed(self.entries) if e.inside == port]  # expired ones too
        mapped = next((p for p in (lent + [port]) if (p, dst) not in taken), None)
        while mapped is None or (mapped, dst) in taken:
            self.randomised += 1
            mapped = self.rng.randrange(1024, 65536)
        self.entries.append(Entry(port, mapped, dst, now))
        return AddrPort(parse_addr_port(f"{self.public}:1").ip, mapped)

    def inbound(self, src: AddrPort, dst_port: int, now: float) -> int | None:
        """The inside port it is delivered to, or None (dropped; maybe a new poison)."""
        e = self._lookup(lambda e: e.mapped == dst_port and e.remote == src, now)
        if e is not None:
            e.seen = now
            return e.inside
        self.entries.append(Entry(None, dst_port, src, now))
        self.poisoned += 1
        return None


@dataclass
class Side:
    name: str
    nat: MasqueradeNat
    paths: PeerPaths | None = None
    next_stun: float = 0.0
    crossings: list[float] = field(default_factory=list)


def run(a_starts: float, b_starts: float, wall_offset: float, until: float) -> tuple[float | None, Side, Side]:
    rng = random.Random(7)
    a = Side("a", MasqueradeNat(A_PUB, rng))
    b = Side("b", MasqueradeNat(B_PUB, rng))
    peer_of = {"a": b, "b": a}
    queue: list[tuple[float, Side, DiscoMessage, AddrPort]] = []
    now = 0.0
    while now < until:
        for side, start in ((a, a_starts), (b, b_starts)):
            if now >= side.next_stun:  # STUN first, then every RESTUN_S (like the agent)
                side.nat.outbound(PORT, STUN, 64, now)
                side.next_stun = now + RESTUN_S
            if side.paths is None and now >= start:
                other = peer_of[side.name]
                static = parse_addr_port(f"{other.nat.public}:{PORT}")
                # its LAN address too, as its endpoint record lists it: useless across the NATs,
                # but a second flow whose random port outlives the first
                lan = parse_addr_port(f"10.0.{1 if other is a else 2}.10:{PORT}")
                side.paths = PeerPaths(KEY_A if side.name == "a" else KEY_B,
                                       KEY_B if side.name == "a" else KEY_A, now,
                                       random.Random(side.name).randbytes,
                                       static_endpoints=(static, lan), first_probe_delay_s=0.3,
                                       wall_clock_offset_s=wall_offset)
        for _t, receiver, msg, src in [q for q in queue if q[0] <= now]:
            assert receiver.paths is not None
            receiver.paths.receive_disco(msg, src, now)
        queue = [q for q in queue if q[0] > now]
        for side in (a, b):
            if side.paths is None:
                continue
            other = peer_of[side.name]
            for out in side.paths.datagrams_to_send(now):
                ttl = out.ttl if isinstance(out, SendPunch) else 64
                src = side.nat.outbound(PORT, out.dst, ttl, now)
                if src is None or str(out.dst.ip) != other.nat.public:
                    continue
                side.crossings.append(now)
                if other.nat.inbound(src, out.dst.port, now) is not None and isinstance(out, SendDisco):
                    if other.paths is not None:
                        queue.append((now + 0.001, other, out.msg, src))
        if all(s.paths is not None and s.paths.path.kind is PathKind.DIRECT for s in (a, b)):
            return now, a, b
        now = round(now + TICK, 6)
    return None, a, b


@pytest.mark.parametrize("wall_offset", [0.0, 9.0, 17.5, 26.0, 33.0])
@pytest.mark.parametrize(("a_starts", "b_starts"), [(0.0, 0.05), (0.05, 0.0), (0.0, 1.7), (3.0, 0.0)])
def test_poisoned_masquerade_pair_goes_direct(a_starts: float, b_starts: float, wall_offset: float) -> None:
    # quiet, then at most a round's wait for the first opening, and the peer's opening after it
    bound = max(a_starts, b_starts) + paths.NO_DIRECT_AFTER_S + paths.QUIET_BEFORE_ROUNDS_S \
        + 2 * paths.RECOVERY_ROUND_S + 1.0
    took, a, b = run(a_starts, b_starts, wall_offset, bound)
    assert took is not None, "still stuck"
    # the start really was poisoned: a flow towards the other side got a random port
    assert a.nat.poisoned and b.nat.poisoned and a.nat.randomised + b.nat.randomised > 0
    assert took > paths.NO_DIRECT_AFTER_S
    assert a.paths is not None and b.paths is not None
    assert a.paths.path.endpoint == parse_addr_port(f"{B_PUB}:{PORT}")
    assert b.paths.path.endpoint == parse_addr_port(f"{A_PUB}:{PORT}")


def test_rounds_alternate_and_quiet_side_sends_nothing_towards_the_peer() -> None:
    assert [holds_round(k, True) for k in range(4)] == [True, False, True, False]
    assert [holds_round(k, False) for k in range(4)] == [False, True, False, True]
    r = paths.RECOVERY_ROUND_S
    assert recovery_round(r - 0.001) == 0 and recovery_round(r) == 1 and recovery_round(3 * r) == 3
    assert r > paths.NAT_UDP_TIMEOUT_S + (paths.OPEN_BURST_PINGS - 1) * paths.PROBE_INTERVAL_S

    dst = parse_addr_port(f"{B_PUB}:{PORT}")
    # the initiator fails at t=5 inside round 0 (its own): quiet through it and the peer's
    # round 1 (what probing left in the NATs expires), then round 2 opens
    assert 2 * r >= paths.NO_DIRECT_AFTER_S + paths.QUIET_BEFORE_ROUNDS_S > r
    me = PeerPaths(KEY_A, KEY_B, 0.0, random.Random(1).randbytes, static_endpoints=(dst,))
    sent: dict[float, list[paths.Outgoing]] = {}
    t = 0.0
    while t < 3 * r:
        sent[t] = me.datagrams_to_send(t)
        t = round(t + 0.1, 6)
    in_round = {k: [o for tt, outs in sent.items() if tt >= paths.NO_DIRECT_AFTER_S
                    and recovery_round(tt) == k for o in outs] for k in range(3)}
    assert in_round[0] == []  # quiet, though the round is ours
    assert in_round[1] == []  # the peer's round: silence
    opening = in_round[2]
    assert opening[0] == SendPunch(dst, HOLD_TTL)  # reap an expired flow first
    assert opening[1] == SendPunch(dst)  # then punch
    pings = [o for o in opening if isinstance(o, SendDisco)]
    assert len(pings) == paths.OPEN_BURST_PINGS  # and open with a burst
    assert opening[-1] == SendPunch(dst, HOLD_TTL)  # then hold
    reap_at = min(tt for tt, outs in sent.items() if SendPunch(dst, HOLD_TTL) in outs and recovery_round(tt) == 2)
    punch_at = min(tt for tt, outs in sent.items() if SendPunch(dst) in outs and recovery_round(tt) == 2)
    assert punch_at - reap_at >= paths.REAP_LEAD_S - 1e-9
