"""The per-peer path manager: find, keep and lose a direct UDP path to one peer (sans-IO).

One `PeerPaths` per peer. It never touches a socket or a clock:

- inputs: `receive_disco(msg, src, now)` (src None = it came over the relay),
  `handle_timer(now)`, and commands (`set_local_endpoints`, `add_static_endpoints`,
  `set_relay_available`, `set_our_nat_hard`);
- outputs: `datagrams_to_send(now)` -> `SendDisco` (seal with disco.DiscoBox, send from
  WireGuard's port via rawsock, or over the relay when `dst` is None) and `SendPunch`
  (a TTL-2 raw packet, rawsock.SharedPortSocket.punch), `next_event()` -> `PathChanged`
  / `NoDirectPath`, and `next_deadline()` for the shell's single timer.

Behaviour (numbers are the constants below):
- Candidates: the peer's static endpoints (signed record), the endpoints of its
  call-me-maybe (local and STUN-mapped addresses), the same list from its endpoint record
  fetched through the git host, and peer-reflexive addresses (where its pings really came
  from). A new candidate gets a few TTL-2 punches first (they open our NAT without
  poisoning the peer's conntrack), then pings.
- While there is no direct path, every candidate is pinged at once, every
  PROBE_INTERVAL_S. The first pong makes its address the path (PathChanged DIRECT): the
  shell sets it as the WireGuard endpoint. No pong within NO_DIRECT_AFTER_S -> one
  NoDirectPath event (the path stays on the relay or none) and the recovery rounds below.
- Recovery rounds (conntrack poisoning on NATs without inbound filtering, e.g. bare
  Linux masquerade): a packet of ours that reaches the peer's NAT before the peer's own
  packet left leaves an unreplied entry there, and the peer's packets to us then get a
  random port. TTL-2 punches avoid it only when a router sits between the two NATs;
  when the NATs are neighbours (same segment) even a punch lands, and unanswered pings
  every few seconds would keep the poison alive forever. So after NO_DIRECT_AFTER_S both
  sides fall silent for QUIET_BEFORE_ROUNDS_S (every entry the probing left expires), and
  then time is cut into rounds of RECOVERY_ROUND_S on the wall clock (both machines agree
  within seconds), taken in turn by the two sides (`holds_round`). In its round a side
  opens: TTL-1 packets to every candidate first (our NAT looks each flow up and reaps it
  if expired: Linux lends an expired, unreaped flow's port to new flows from the same
  inside port, so a random port would outlive its flow), then punches, then
  OPEN_BURST_PINGS pings to every candidate; through the rest of its round it only
  *holds* its NAT entries with TTL-1 packets, which refresh its own NAT's entries and die
  there. In the other side's round it sends nothing at all. Each round is longer than the
  NAT's idle timeout plus a burst, so when a side opens, the poison the other side's burst
  left in its NAT has expired, so have its own flows, and the other side holds fresh
  entries from its own burst: the ping goes through, in the second round that opens.
  A ping received while probing is answered with a pong and a ping.
  After the death of a path, slow probing (every SLOW_PROBE_INTERVAL_S) comes first for
  DEATH_GRACE_S, since a glitch usually heals by itself.
- While direct: a heartbeat ping to the path every HEARTBEAT_INTERVAL_S (it also keeps
  the NAT mapping alive, below the 30 s the lab NATs keep an idle mapping), and all
  candidates re-probed at least every REPROBE_INTERVAL_S; a better one (`better_path`) takes
  over. Both fall on one beat grid on the wall clock (`heartbeat_slot`), the same for every
  peer and every machine: an agent's heartbeats to all its peers leave in one timer wakeup,
  and its peers' pings and pongs arrive together (in a few reads, not one wakeup per peer per
  interval). The two sides of a pair take the beats in turn (`our_beat`: the lower key the
  even ones) while each hears the other's heartbeats from the path: every beat still carries
  a round trip on the path, at half the packets. Each side expects the peer's next heartbeat
  2 x HEARTBEAT_INTERVAL_S after its last one (PEER_BEAT_SLACK_S later at most: that is
  relative, so clock skew does not matter); a late one makes us ping at once and on every beat
  until the peer's heartbeats come again, so a dead path is noticed as soon as before. A side
  that never hears the peer's heartbeats on the path (an asymmetric path, an older peer) pings
  on every beat.
  A missed heartbeat makes the next ones come every SUSPECT_INTERVAL_S and re-probes
  every other candidate at once (any of them that answers takes over); after
  MISSED_PONGS_FOR_DEATH misses in a row the path is dead (PathChanged to relay or none)
  and fast probing starts again, so a NAT rebinding recovers within seconds.
- Replays are harmless: a pong counts only once, for a txid we sent and still wait for,
  from the address we pinged.
- No reflection: a ping can be captured and replayed from any address, and what it makes us
  send goes to that address. So an address no pong of ours has come back from (unverified)
  gets at most one pong per ping and, when it is new, one ping of ours to verify it: never
  punches, never call-me-maybe, never the periodic probes; it is forgotten when that ping goes
  unanswered, at most MAX_UNVERIFIED_REFLEXIVE of them are kept (they never push out the
  peer's own candidates), and all sends to unverified addresses share one budget per peer
  (UNVERIFIED_SENDS_PER_S). One replayed ping makes two packets (pong and ping, 210 bytes for
  its 112), and a flood of them a few a second. Why the two: without the pong a peer behind
  a symmetric NAT could never prove its path to us (only we see the port its NAT chose), and
  without our own ping we could not prove ours to it (only a pong to our own fresh txid, from
  that very address, does). Punches are not needed there: the peer's NAT already maps towards
  us (the ping left through it), and our pong opens our own. A reflexive address that answers
  is verified like any other candidate, and only then counts as the peer's symmetric NAT.
- One designated WireGuard initiator per pair (`is_designated_initiator`): the side
  behind the harder NAT, else the lower public key. PathChanged carries it so the shell
  lets only that side start the handshake (two simultaneous handshakes cost WireGuard's
  5 s retry timer).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from meshctl.keys import NodePublic
from meshctl.nat.addr import AddrPort
from meshctl.nat.disco import MAX_ENDPOINTS, TXID_LEN, CallMeMaybe, DiscoMessage, Ping, Pong
from meshctl.ratelimit import TokenBucket

PROBE_INTERVAL_S: Final = 1.0  # ping every candidate this often while looking for a path
NO_DIRECT_AFTER_S: Final = 5.0  # report NoDirectPath after this long without a pong
SLOW_PROBE_INTERVAL_S: Final = 10.0  # after a path died: keep trying, gently
PING_TIMEOUT_S: Final = 2.0  # a ping unanswered this long is missed
# Ping the current path this often (also a NAT keepalive, < 25 s). Tailscale uses 3 s too;
# it bounds how long a dead path goes unnoticed: 3 + 2 (timeout) + 3 x 1 (suspect) = 8 s.
# The beats fall on multiples of it on the wall clock (`heartbeat_slot`): all peers at once.
HEARTBEAT_INTERVAL_S: Final = 3.0
SUSPECT_INTERVAL_S: Final = 1.0  # heartbeat spacing after a miss
# The peer's heartbeat (every other beat) is late after this much more than two beats: ping now.
PEER_BEAT_SLACK_S: Final = 1.0
# 4 misses: at most about 8 s to declare death; a false death at 10 % loss per direction is rare
# (0.19 ** 4 per heartbeat) and costs one fast re-probe.
MISSED_PONGS_FOR_DEATH: Final = 4
REPROBE_INTERVAL_S: Final = 25.0  # re-probe every candidate at least this often while direct (on a beat)
PUNCHES_PER_CANDIDATE: Final = 2
MAX_CANDIDATES: Final = 2 * MAX_ENDPOINTS  # static + call-me-maybe + reflexive, bounded
MAX_OUTSTANDING_PINGS: Final = 256
# A challenger must be this much faster to replace a working path: avoids flapping.
LATENCY_HYSTERESIS: Final = 0.8
LAN_BONUS: Final = 0.9  # private / loopback / link-local addresses: same network, prefer
NAT_UDP_TIMEOUT_S: Final = 30.0  # an idle or unreplied UDP mapping is forgotten after this (DESIGN.md)
OPEN_BURST_PINGS: Final = 3  # pings per candidate when a side opens its round, PROBE_INTERVAL_S apart
# A round outlasts the NAT timeout after the last packet of a burst, with a few seconds
# to spare for the skew between the two machines' clocks.
RECOVERY_ROUND_S: Final = NAT_UDP_TIMEOUT_S + (OPEN_BURST_PINGS - 1) * PROBE_INTERVAL_S + 4.0
# Probing ends, then silence from both sides for the NAT timeout (and the clock skew) before
# any round opens: whatever the probing left in either NAT has expired by then.
QUIET_BEFORE_ROUNDS_S: Final = NAT_UDP_TIMEOUT_S + 4.0
REAP_LEAD_S: Final = 0.2  # the reaping TTL-1 packets go this long before a round's punches
HOLD_INTERVAL_S: Final = SLOW_PROBE_INTERVAL_S  # refresh our own NAT entries (< NAT_UDP_TIMEOUT_S)
PUNCH_TTL: Final = 2  # passes our NAT, dies before the peer's when a router sits between
HOLD_TTL: Final = 1  # refreshes our NAT's existing entry and dies there: never reaches the peer
DEATH_GRACE_S: Final = 60.0  # after a path died, slow probing this long before the rounds
# Sends to addresses no pong has come back from (module docstring, "No reflection"): a real peer
# needs a handful while it probes; a replayed ping gets no more than these.
UNVERIFIED_SENDS_PER_S: Final = 4.0
UNVERIFIED_SENDS_BURST: Final = 8.0
MAX_UNVERIFIED_REFLEXIVE: Final = 4
# floor() of a time that is exactly a round boundary must land in the new round
_ROUND_EPSILON: Final = 1e-6


class PathKind(enum.Enum):
    DIRECT = "direct"
    RELAY = "relay"
    NONE = "none"


class CandidateSource(enum.Enum):
    STATIC = "static"  # the peer's signed record
    CALL_ME_MAYBE = "call-me-maybe"  # the peer's own list (local + STUN-mapped)
    RECORD = "record"  # the same list from its signed endpoint record (through the git host)
    REFLEXIVE = "reflexive"  # where the peer's pings came from


@dataclass(frozen=True, slots=True)
class Path:
    """A path to the peer; `endpoint` and `latency_s` are set for DIRECT only."""

    kind: PathKind
    endpoint: AddrPort | None = None
    latency_s: float | None = None


@dataclass(frozen=True, slots=True)
class SendDisco:
    """Seal `msg` for this peer and send it to `dst` from WireGuard's port; None = via relay."""

    msg: DiscoMessage
    dst: AddrPort | None


@dataclass(frozen=True, slots=True)
class SendPunch:
    """A low-TTL raw packet from WireGuard's port to `dst` (opens or refreshes our NAT only)."""

    dst: AddrPort
    ttl: int = PUNCH_TTL


Outgoing: TypeAlias = SendDisco | SendPunch


@dataclass(frozen=True, slots=True)
class PathChanged:
    """Use this path from now on (DIRECT: set the WireGuard endpoint to path.endpoint)."""

    path: Path
    initiator: bool  # this side should start the WireGuard handshake


@dataclass(frozen=True, slots=True)
class NoDirectPath:
    """No candidate answered within NO_DIRECT_AFTER_S: stay on the relay (or have no path)."""

    candidates: int
    probing_for_s: float


PathEvent: TypeAlias = PathChanged | NoDirectPath


def _lan(addr: AddrPort) -> bool:
    ip = addr.ip
    return ip.is_private or ip.is_loopback or ip.is_link_local


def _score(p: Path) -> float:
    latency = p.latency_s if p.latency_s is not None else float("inf")
    if p.endpoint is not None and _lan(p.endpoint):
        latency *= LAN_BONUS
    return latency


def better_path(a: Path, b: Path | None) -> bool:
    """Is `a` strictly better than the current path `b`? (direct > relay > none; then latency)

    Among direct paths the challenger must be faster by the hysteresis factor, after
    a bonus for same-network addresses, so two similar paths don't flap.
    """
    rank = {PathKind.DIRECT: 2, PathKind.RELAY: 1, PathKind.NONE: 0}
    if b is None:
        return a.kind is not PathKind.NONE
    if rank[a.kind] != rank[b.kind]:
        return rank[a.kind] > rank[b.kind]
    if a.kind is not PathKind.DIRECT or a.endpoint == b.endpoint:
        return False
    return _score(a) < _score(b) * LATENCY_HYSTERESIS


def is_designated_initiator(
    ours: NodePublic, theirs: NodePublic, our_nat_hard: bool, peer_nat_hard: bool
) -> bool:
    """Which side starts the WireGuard handshake: the harder NAT, else the lower key.

    The side behind a symmetric NAT must send first: only its own outgoing packet
    reveals the port the other side has to answer to.
    """
    if our_nat_hard != peer_nat_hard:
        return our_nat_hard
    return ours.raw < theirs.raw


def recovery_round(wall_now: float) -> int:
    """The number of the recovery round at wall-clock time `wall_now` (same on both sides)."""
    return math.floor(wall_now / RECOVERY_ROUND_S + _ROUND_EPSILON)


def heartbeat_slot(wall_now: float) -> float:
    """The first beat of the heartbeat grid strictly after wall-clock time `wall_now` (a time
    exactly on a beat, give or take float rounding, counts as that beat: the next one follows)."""
    return (math.floor(wall_now / HEARTBEAT_INTERVAL_S + _ROUND_EPSILON) + 1) * HEARTBEAT_INTERVAL_S


def our_beat(wall_beat: float, ours: NodePublic, theirs: NodePublic) -> bool:
    """Whose heartbeat the beat at wall time `wall_beat` is: the lower key's the even ones.
    By keys alone (not the NAT classes), so the two sides never disagree."""
    return (round(wall_beat / HEARTBEAT_INTERVAL_S) % 2 == 0) == (ours.raw < theirs.raw)


def holds_round(round_no: int, initiator: bool) -> bool:
    """Whose turn it is: the designated initiator takes the even rounds, the other the odd."""
    return (round_no % 2 == 0) == initiator


@dataclass(slots=True)
class _Candidate:
    source: CandidateSource
    latency_s: float | None = None
    last_pong: float | None = None

    @property
    def unverified_reflexive(self) -> bool:
        """Known only from a ping's source address (replayable from anywhere), not yet answered."""
        return self.source is CandidateSource.REFLEXIVE and self.last_pong is None


class _Mode(enum.Enum):
    PROBING = "probing"
    DIRECT = "direct"


class PeerPaths:
    """Path state for one peer. Drive it with the inputs; act on the outputs."""

    def __init__(
        self,
        our_node_key: NodePublic,
        peer_node_key: NodePublic,
        now: float,
        randbytes: Callable[[int], bytes],
        static_endpoints: Iterable[AddrPort] = (),
        relay_available: bool = False,
        our_nat_hard: bool = False,
        first_probe_delay_s: float = 0.0,
        wall_clock_offset_s: float = 0.0,
    ) -> None:
        """`wall_clock_offset_s` turns `now` into wall-clock time (time.time() - now): the
        recovery rounds of the two sides line up on the wall clock."""
        self.our_node_key = our_node_key
        self.peer_node_key = peer_node_key
        self._rand = randbytes
        self._relay = relay_available
        self._our_hard = our_nat_hard
        self.peer_nat_hard = False  # learnt: its pings came from an unadvertised port
        self._local: tuple[AddrPort, ...] = ()
        self._candidates: dict[AddrPort, _Candidate] = {}
        self._pings: dict[bytes, tuple[AddrPort, float]] = {}  # txid -> (dst, sent at)
        self._out: list[Outgoing] = []
        self._events: deque[PathEvent] = deque()
        self._path = Path(PathKind.RELAY if relay_available else PathKind.NONE)
        self._mode = _Mode.PROBING
        self._probing_since = now
        self._reported_no_direct = False
        # A delay lets the TTL-2 punches of the static candidates (queued below) go out,
        # and a peer starting at the same time punch too, before our first ping arrives.
        self._next_probe = now + first_probe_delay_s
        self._next_heartbeat = now
        self._next_reprobe = now
        self._missed = 0
        self._peer_beat_at: float | None = None  # the peer's last heartbeat heard on the direct path
        self._wall_offset = wall_clock_offset_s
        self._rounds_from = now + NO_DIRECT_AFTER_S  # when probing turns into recovery rounds
        self._round: int | None = None  # the round last acted on
        self._burst_left = 0
        self._next_hold = now
        self._cmm_pending = False
        self._unverified_sends = TokenBucket.full(UNVERIFIED_SENDS_PER_S, UNVERIFIED_SENDS_BURST, now)
        if relay_available:
            self._events.append(PathChanged(self._path, self.initiator))
        self._add(static_endpoints, CandidateSource.STATIC)

    # --- inspection ----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def initiator(self) -> bool:
        return is_designated_initiator(
            self.our_node_key, self.peer_node_key, self._our_hard, self.peer_nat_hard
        )

    def candidates(self) -> dict[AddrPort, CandidateSource]:
        return {a: c.source for a, c in self._candidates.items()}

    # --- commands ------------------------------------------------------------------------

    def set_local_endpoints(self, endpoints: Iterable[AddrPort], now: float) -> None:
        """Our candidates changed (new STUN mapping, new address): tell the peer."""
        new = tuple(dict.fromkeys(endpoints))[:MAX_ENDPOINTS]
        if new != self._local:
            self._local = new
            self._send_call_me_maybe()

    def add_static_endpoints(self, endpoints: Iterable[AddrPort], now: float) -> None:
        if self._add(endpoints, CandidateSource.STATIC):
            self._restart_probing(now)

    def set_record_candidates(self, endpoints: Iterable[AddrPort], now: float) -> None:
        """The candidates of the peer's fresh endpoint record (an empty list once it went stale).

        Like a call-me-maybe that came through the git host: the record's candidates replace
        the previous record's (the current path stays whatever happens), and new ones are
        punched and probed at once."""
        wanted = tuple(dict.fromkeys(endpoints))[:MAX_ENDPOINTS]
        self._candidates = {a: c for a, c in self._candidates.items()
                            if c.source is not CandidateSource.RECORD or a in wanted or a == self._path.endpoint}
        if self._add(wanted, CandidateSource.RECORD):
            self._restart_probing(now)

    def set_relay_available(self, available: bool, now: float) -> None:
        self._relay = available
        if self._path.kind is not PathKind.DIRECT:
            self._set_path(Path(PathKind.RELAY if available else PathKind.NONE))
        if available and self._local:
            self._send_call_me_maybe()

    def set_our_nat_hard(self, hard: bool) -> None:
        """From netcheck's mapping_varies_by_dest."""
        self._our_hard = hard

    # --- inputs --------------------------------------------------------------------------

    def receive_disco(self, msg: DiscoMessage, src: AddrPort | None, now: float) -> None:
        """A message already opened and attributed to this peer by the shell."""
        match msg:
            case Ping(txid, node_key):
                self._on_ping(txid, node_key, src, now)
            case Pong(txid, _seen_as):
                self._on_pong(txid, src, now)
            case CallMeMaybe(endpoints):
                self._on_call_me_maybe(endpoints, now)

    def handle_timer(self, now: float) -> None:
        self._expire_pings(now)
        if self._mode is _Mode.PROBING:
            if not self._reported_no_direct and now >= self._probing_since + NO_DIRECT_AFTER_S:
                self._reported_no_direct = True
                self._events.append(NoDirectPath(len(self._candidates), now - self._probing_since))
            if now >= self._rounds_from:
                self._recovery_step(now)
            elif now >= self._next_probe:
                self._ping_all(now, except_=None)
                fast = now < self._probing_since + NO_DIRECT_AFTER_S
                self._next_probe = now + (PROBE_INTERVAL_S if fast else SLOW_PROBE_INTERVAL_S)
            return
        best = self._path.endpoint
        assert best is not None
        late = self._peer_late_at()
        if late is not None and now >= late:
            self._peer_beat_at = None  # the peer's heartbeat is late: ours now, and on every beat
            self._next_heartbeat = min(self._next_heartbeat, now)
        if now >= self._next_heartbeat:
            self._ping(best, now)
            self._next_heartbeat = now + SUSPECT_INTERVAL_S if self._missed else self._beat_after(now)
        if now >= self._next_reprobe:
            self._ping_all(now, except_=best)
            self._next_reprobe = self._reprobe_after(now)

    # --- outputs -------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Outgoing]:
        self.handle_timer(now)
        out, self._out = self._out, []
        return out

    def next_event(self) -> PathEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float:
        deadlines = [min((t + PING_TIMEOUT_S for _, t in self._pings.values()), default=float("inf"))]
        if self._mode is _Mode.PROBING:
            if not self._reported_no_direct:
                deadlines.append(self._probing_since + NO_DIRECT_AFTER_S)
            if self._round is None:  # not in the rounds yet
                deadlines += [self._next_probe, self._rounds_from]
            else:
                deadlines.append(self._round_start(self._round + 1))
                if self._opens(self._round):
                    deadlines.append(self._next_probe if self._burst_left else self._next_hold)
        else:
            deadlines += [self._next_heartbeat, self._next_reprobe]
            if (late := self._peer_late_at()) is not None:
                deadlines.append(late)
        return min(deadlines)

    # --- the beat grid --------------------------------------------------------------------

    def _beat_after(self, now: float) -> float:
        """Our next heartbeat: the first beat of the wall-clock grid after `now`, or the one after
        it when that is the peer's turn and its heartbeats reach us (module docstring)."""
        wall = heartbeat_slot(now + self._wall_offset)
        if not our_beat(wall, self.our_node_key, self.peer_node_key) and self._peer_beating(wall - self._wall_offset):
            wall += HEARTBEAT_INTERVAL_S
        return wall - self._wall_offset

    def _peer_late_at(self) -> float | None:
        """When the peer's next heartbeat on the path is late (None: none heard since the last change)."""
        if self._peer_beat_at is None:
            return None
        return self._peer_beat_at + 2 * HEARTBEAT_INTERVAL_S + PEER_BEAT_SLACK_S

    def _peer_beating(self, at: float) -> bool:
        """Whether the peer's heartbeat on the path is expected by `at` (it takes the other beats)."""
        late = self._peer_late_at()
        return late is not None and at < late

    def _reprobe_after(self, now: float) -> float:
        """The next re-probe: the last beat no later than REPROBE_INTERVAL_S from `now`."""
        return heartbeat_slot(now + REPROBE_INTERVAL_S - HEARTBEAT_INTERVAL_S + self._wall_offset) - self._wall_offset

    # --- recovery rounds -----------------------------------------------------------------

    def _round_start(self, round_no: int) -> float:
        return round_no * RECOVERY_ROUND_S - self._wall_offset

    def _recovery_step(self, now: float) -> None:
        """Quiet first; then open in our rounds (reap, punch, burst) and hold through them."""
        k = recovery_round(now + self._wall_offset)
        if k != self._round:
            self._round = k
            self._burst_left = 0
            if not self._opens(k):
                return  # the peer's round, or still quiet: nothing leaves towards it
            # Reap first: a TTL-1 packet per candidate makes our NAT look its flow up, which
            # removes the flow if it expired (an expired flow still lends its port to new ones
            # until reaped: a random port from a poisoned start would come back). Then open.
            self._punch_all(HOLD_TTL)
            self._burst_left = OPEN_BURST_PINGS
            self._next_probe = now + REAP_LEAD_S
        if not self._opens(k):
            return
        if self._burst_left:
            if now >= self._next_probe:
                if self._burst_left == OPEN_BURST_PINGS:  # the burst's first ping: punch before it
                    self._punch_all(PUNCH_TTL)
                    if self._cmm_pending:
                        self._send_call_me_maybe()
                self._ping_all(now, except_=None)
                self._burst_left -= 1
                self._next_probe = now + PROBE_INTERVAL_S
                self._next_hold = now + HOLD_INTERVAL_S
        elif now >= self._next_hold:
            self._punch_all(HOLD_TTL)
            self._next_hold = now + HOLD_INTERVAL_S

    def _punch_all(self, ttl: int) -> None:
        """One raw packet of `ttl` to every IPv4 candidate (the raw socket speaks IPv4)."""
        self._out += [SendPunch(a, ttl) for a in self._probe_targets() if a.ip.version == 4]

    def _opens(self, round_no: int) -> bool:
        """Round `round_no` is ours, and starts after both sides' probing has been quiet long
        enough for every entry it left in either NAT (poison, random ports) to expire."""
        quiet_from = self._rounds_from + QUIET_BEFORE_ROUNDS_S
        return holds_round(round_no, self.initiator) and self._round_start(round_no) >= quiet_from

    def _silent(self) -> bool:
        """In the recovery rounds, outside our own burst: nothing may reach the peer's NAT."""
        return self._mode is _Mode.PROBING and self._round is not None and not self._burst_left

    def _leave_rounds(self, now: float, rounds_in: float) -> None:
        self._round = None
        self._burst_left = 0
        self._rounds_from = now + rounds_in

    # --- internals -----------------------------------------------------------------------

    def _add(self, endpoints: Iterable[AddrPort], source: CandidateSource) -> list[AddrPort]:
        """New candidates; the peer's own (static, call-me-maybe) get TTL-2 punches first."""
        added = []
        for addr in endpoints:
            if addr in self._candidates or addr.port == 0 or addr.ip.is_unspecified:
                continue
            if len(self._candidates) >= MAX_CANDIDATES:
                if not self._evict_one():
                    break
            self._candidates[addr] = _Candidate(source)
            if source is not CandidateSource.REFLEXIVE and addr.ip.version == 4:
                self._out += [SendPunch(addr)] * PUNCHES_PER_CANDIDATE
            added.append(addr)
        return added

    def _evict_one(self) -> bool:
        """Make room: drop the oldest reflexive, then call-me-maybe candidate (never the path)."""
        for source in (CandidateSource.REFLEXIVE, CandidateSource.CALL_ME_MAYBE, CandidateSource.RECORD):
            for addr, cand in self._candidates.items():
                if cand.source is source and addr != self._path.endpoint:
                    del self._candidates[addr]
                    return True
        return False

    def _probe_targets(self) -> list[AddrPort]:
        """Where probes, punches and call-me-maybe go: every candidate but unverified reflexive ones."""
        return [a for a, c in self._candidates.items() if not c.unverified_reflexive]

    def _may_send_unverified(self, now: float) -> bool:
        return self._unverified_sends.take(1.0, now)

    def _send_call_me_maybe(self) -> None:
        msg = CallMeMaybe(self._local)
        self._cmm_pending = False
        if self._relay:
            self._out.append(SendDisco(msg, None))
        elif self._path.endpoint is not None:
            self._out.append(SendDisco(msg, self._path.endpoint))
        elif self._silent():
            self._cmm_pending = True  # sent with our next burst
        else:  # no working path yet: try where the peer might already listen
            self._out += [SendDisco(msg, a) for a in self._probe_targets()]

    def _ping(self, dst: AddrPort, now: float) -> None:
        txid = self._rand(TXID_LEN)
        if len(self._pings) >= MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        self._pings[txid] = (dst, now)
        self._out.append(SendDisco(Ping(txid, self.our_node_key), dst))

    def _ping_all(self, now: float, except_: AddrPort | None) -> None:
        for addr in self._probe_targets():
            if addr != except_:
                self._ping(addr, now)

    def _restart_probing(self, now: float) -> None:
        if self._mode is _Mode.PROBING:
            self._probing_since = now
            self._reported_no_direct = False
            self._next_probe = now
            self._leave_rounds(now, NO_DIRECT_AFTER_S)
        else:
            self._next_reprobe = now  # look for a better path among the new ones

    def _set_path(self, path: Path) -> None:
        if path != self._path:
            changed = (path.kind, path.endpoint) != (self._path.kind, self._path.endpoint)
            self._path = path
            if changed:
                self._events.append(PathChanged(path, self.initiator))

    def _expire_pings(self, now: float) -> None:
        for txid, (dst, sent) in list(self._pings.items()):
            if now < sent + PING_TIMEOUT_S:  # same expression as next_deadline: no busy wake-ups
                continue
            del self._pings[txid]
            cand = self._candidates.get(dst)
            if cand is not None and cand.unverified_reflexive and all(d != dst for d, _ in self._pings.values()):
                del self._candidates[dst]  # it did not answer: no more of our packets go there
                continue
            if self._mode is _Mode.DIRECT and dst == self._path.endpoint:
                self._missed += 1
                self._next_heartbeat = min(self._next_heartbeat, now + SUSPECT_INTERVAL_S)
                if self._missed >= MISSED_PONGS_FOR_DEATH:
                    self._path_died(now)
                    return
                # the path may have moved (NAT rebinding): ask every other candidate now
                self._ping_all(now, except_=dst)

    def _path_died(self, now: float) -> None:
        self._mode = _Mode.PROBING
        self._missed = 0
        self._peer_beat_at = None
        self._pings.clear()
        self._probing_since = now
        self._reported_no_direct = False
        self._next_probe = now
        self._leave_rounds(now, DEATH_GRACE_S)
        self._set_path(Path(PathKind.RELAY if self._relay else PathKind.NONE))

    def _on_ping(self, txid: bytes, node_key: NodePublic, src: AddrPort | None, now: float) -> None:
        if node_key != self.peer_node_key or src is None:
            return  # not this peer's WireGuard key, or over the relay (proves no path)
        cand = self._candidates.get(src)
        verified = cand is not None and cand.last_pong is not None
        if not verified and not self._may_send_unverified(now):
            return  # module docstring, "No reflection"
        self._out.append(SendDisco(Pong(txid, src), src))
        if self._mode is _Mode.DIRECT and src == self._path.endpoint:
            self._peer_beat_at = now  # the peer's heartbeat: the path carries its packets to us
        if cand is None:
            self._add_reflexive(src, now)
        elif self._mode is _Mode.PROBING and all(d != src for d, _ in self._pings.values()):
            # the peer got through to us (e.g. it opened its recovery round while we only
            # held our NAT entries): ping back at once, our own pong makes the path
            if verified or self._may_send_unverified(now):
                self._ping(src, now)

    def _add_reflexive(self, src: AddrPort, now: float) -> None:
        """Where a ping came from, not yet proven: one ping of ours to verify it, if the budget allows."""
        if not self._may_send_unverified(now):
            return
        unverified = [a for a, c in self._candidates.items() if c.unverified_reflexive]
        if len(unverified) >= MAX_UNVERIFIED_REFLEXIVE:
            del self._candidates[unverified[0]]
        if self._add([src], CandidateSource.REFLEXIVE):
            self._ping(src, now)

    def _on_pong(self, txid: bytes, src: AddrPort | None, now: float) -> None:
        sent = self._pings.get(txid)
        if sent is None:
            return  # stale, replayed or not ours
        dst, sent_at = sent
        if src != dst:
            return  # only a round trip on the same address proves the path
        # older pings to the same address are answered by this pong (they must not count
        # as missed heartbeats later)
        for other, (odst, osent) in list(self._pings.items()):
            if odst == dst and osent <= sent_at:
                del self._pings[other]
        latency = max(0.0, now - sent_at)
        cand = self._candidates.get(dst)
        if cand is not None:
            if cand.unverified_reflexive and dst.ip in {a.ip for a, c in self._candidates.items()
                                                        if c.source is not CandidateSource.REFLEXIVE}:
                self.peer_nat_hard = True  # its public IP, a port it never advertised: symmetric NAT
            cand.latency_s, cand.last_pong = latency, now
        challenger = Path(PathKind.DIRECT, dst, latency)
        if self._mode is _Mode.DIRECT and dst == self._path.endpoint:
            self._missed = 0
            self._next_heartbeat = self._beat_after(now)
            self._set_path(challenger)  # refresh latency, no event
            return
        # a path that is missing heartbeats loses to any path that just answered
        if better_path(challenger, self._path) or (self._missed and self._mode is _Mode.DIRECT):
            self._mode = _Mode.DIRECT
            self._leave_rounds(now, NO_DIRECT_AFTER_S)
            self._missed = 0
            self._peer_beat_at = None  # a new path: its heartbeats are still to be heard
            self._next_heartbeat = self._beat_after(now)
            self._next_reprobe = self._reprobe_after(now)
            self._set_path(challenger)

    def _on_call_me_maybe(self, endpoints: tuple[AddrPort, ...], now: float) -> None:
        keep = {a: c for a, c in self._candidates.items()
                if c.source is not CandidateSource.CALL_ME_MAYBE or a in endpoints
                or a == self._path.endpoint}
        self._candidates = keep
        self._add(endpoints, CandidateSource.CALL_ME_MAYBE)
        # the peer is asking for pings now: everyone at once, and probe fast again
        self._ping_all(now, except_=None)
        if self._mode is _Mode.PROBING:
            self._probing_since = now
            self._reported_no_direct = False
            self._next_probe = now + PROBE_INTERVAL_S
            self._leave_rounds(now, NO_DIRECT_AFTER_S)

