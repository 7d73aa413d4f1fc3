"""The relay's state machine: admission, forwarding and channels for all its clients (sans-IO).

One `RelayCore` per relay process; the wire format is wire.py, the channel table channels.py.
The asyncio shell (server.py, channel_io.py) feeds it datagrams, stream frames and timer
ticks, and drains its one output queue. No sockets, no clock (`now` is passed in),
randomness injected.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeAlias

from meshctl.keys import NodePublic, SigningKey, VerifyKey
from meshctl.nat import stun
from meshctl.nat.addr import addr_port
from meshctl.ratelimit import BucketTable
from meshctl.ratelimit import TokenBucket as TokenBucket  # re-exported: the relay's per-member limit
from meshctl.relay.channels import ChannelTable, Member, Notice, PortAllocator
from meshctl.relay.wire import (
    HEADER_LEN,
    KEY_END,
    MAX_FRAME_LEN,
    NONCE_LEN,
    NONCE_TIME_LEN,
    PING_INTERVAL_S,
    RECV_PREFIX,
    SEND_PREFIX,
    TOKEN_END,
    TOKEN_LEN,
    BadMagicError,
    Challenge,
    ChallengeResponse,
    ChannelInfo,
    ChannelRequest,
    ClientHello,
    Close,
    Denied,
    DenyReason,
    FrameTooLargeError,
    KeepAlive,
    LocalProtocolError,
    Ping,
    Pong,
    RelayParseError,
    SendPacket,
    TruncatedFrameError,
    UnknownFrameTypeError,
    UnsupportedVersionError,
    Welcome,
    auth_message,
    marshal_frame,
    parse_frame,
    welcome_message,
)

# --- server side -------------------------------------------------------------------------------

ConnId: TypeAlias = Hashable  # the shell's name for a client: a UDP (ip, port) or a TCP connection

CHALLENGE_LIFETIME_S: Final = 10.0  # a nonce older than this is refused (bounds replays)
SESSION_IDLE_TIMEOUT_S: Final = 45.0  # clients ping every PING_INTERVAL_S; three missed pings and more
DEFAULT_RATE_BYTES_PER_S: Final = 125_000_000  # 1 Gbit/s per client
DEFAULT_BURST_BYTES: Final = 4 * 1024 * 1024  # a few ms of line rate; absorbs TCP bursts
DEFAULT_MAX_SESSIONS: Final = 10_000
# Every reply to a frame that is not from a logged-in session (a challenge, a refusal, a version
# mismatch, an unknown session) is rate-limited, so a relay cannot be turned into a reflector
# toward spoofed addresses: per source address, and for all sources together.
UNAUTH_REPLIES_PER_S: Final = 1000.0
UNAUTH_REPLIES_PER_SOURCE_PER_S: Final = 20.0  # a login takes one challenge; members behind one NAT share it
UNAUTH_SOURCE_BURST: Final = 40.0
MAX_UNAUTH_SOURCES: Final = 4096  # per-source budgets kept at most (the oldest go first)
NO_SESSION_REPLIES_PER_S: Final = 200.0  # of those, "no such session" (every stale client asks at once)
STUN_REPLIES_PER_S: Final = 2000.0  # STUN answers, apart: every node asks every 25 s
# A login's signature check costs the relay about 100-300 us: a forged ChallengeResponse (a
# member's public keys, a nonce the sender got for its own address, any signature) is one
# packet each. Per address a login or a retry a second; all together enough for a few hundred
# members logging in each second (a relay restart) and at most a few percent of a core.
AUTH_CHECKS_PER_SOURCE_PER_S: Final = 1.0
AUTH_CHECKS_PER_SOURCE_BURST: Final = 4.0
AUTH_CHECKS_PER_S: Final = 300.0
MAX_AUTH_SOURCES: Final = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    rate_bytes_per_s: float = DEFAULT_RATE_BYTES_PER_S
    burst_bytes: float = DEFAULT_BURST_BYTES
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_idle_s: float = SESSION_IDLE_TIMEOUT_S
    ping_interval_s: float = PING_INTERVAL_S


class SessionState(Enum):
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


@dataclass(slots=True)
class ServerSession:
    """One authenticated client as the relay sees it."""

    conn: ConnId
    identity: VerifyKey
    wg_key: NodePublic
    token: bytes
    bucket: TokenBucket
    last_seen: float
    state: SessionState = SessionState.AUTHENTICATED


@dataclass(frozen=True, slots=True)
class ClientAdmitted:
    conn: ConnId
    identity: VerifyKey
    wg_key: NodePublic


@dataclass(frozen=True, slots=True)
class ClientDropped:
    conn: ConnId
    identity: VerifyKey
    wg_key: NodePublic
    reason: str  # "idle" | "revoked" | "replaced" | "closed" (stream ended) | "left" (Close frame)
    hang_up: bool = True  # a stream connection the shell must close (after sending what came before)


ServerEvent: TypeAlias = ClientAdmitted | ClientDropped


@dataclass(slots=True)
class RelayStats:
    """Counters the shell exports (Prometheus names in metrics.py)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    auth_ok: int = 0
    auth_failed: int = 0
    stun: int = 0
    channel_packets_in: int = 0  # through channels (channel_io.py), counted per batch
    channel_bytes_in: int = 0
    channel_packets_out: int = 0

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + count


# The core's one output queue holds, in order, frames to send (conn, bytes) and events (a
# session admitted or dropped: log it, open or close its socket, hang up a dropped stream).
Output: TypeAlias = tuple[ConnId, bytes] | ServerEvent


class RelayCore:
    """Admission and forwarding for every client of one relay (sans-IO).

    Inputs: `receive(conn, data, now)` (one datagram or one whole stream frame),
    `receive_stun(addr, data, now)`, `receive_bind(port, addr, data, now)` (a channel port),
    `connection_lost(conn)`, `set_members(...)`, `handle_timer(now)`.
    Output: one queue, `take_output()`, of frames to send and session events, in the order
    they arose (a Denied frame comes before the event that hangs its stream up); `stats`.
    Channels (channels.py) need a PortAllocator from the shell; without one every
    request is answered CLOSED and members keep to frames.
    """

    def __init__(self, relay_name: str, secret: bytes, randbytes: Callable[[int], bytes],
                 signing_key: SigningKey | None = None, limits: Limits | None = None,
                 ports: PortAllocator | None = None) -> None:
        if len(secret) < 16:
            raise LocalProtocolError("relay secret must be at least 16 bytes")
        self.relay_name = relay_name
        self._secret = secret
        self._rand = randbytes
        self._signing_key = signing_key
        self.limits = limits or Limits()
        self.network_id = ""
        self._members: dict[VerifyKey, NodePublic] = {}
        self._by_conn: dict[ConnId, ServerSession] = {}
        self._by_wg: dict[bytes, ServerSession] = {}
        self.stats = RelayStats()
        self._no_session = TokenBucket.full(NO_SESSION_REPLIES_PER_S, NO_SESSION_REPLIES_PER_S, 0.0)
        self._unauth = TokenBucket.full(UNAUTH_REPLIES_PER_S, UNAUTH_REPLIES_PER_S, 0.0)
        self._stun = TokenBucket.full(STUN_REPLIES_PER_S, STUN_REPLIES_PER_S, 0.0)
        self._unauth_by_source: BucketTable[Hashable] = BucketTable(
            UNAUTH_REPLIES_PER_SOURCE_PER_S, UNAUTH_SOURCE_BURST, MAX_UNAUTH_SOURCES)
        self._admit_until: float | None = None  # the accepted state's expiry, on the monotonic clock
        self._auth_sources: BucketTable[ConnId] = BucketTable(AUTH_CHECKS_PER_SOURCE_PER_S,
                                                              AUTH_CHECKS_PER_SOURCE_BURST, MAX_AUTH_SOURCES)
        self._auth_checks = TokenBucket.full(AUTH_CHECKS_PER_S, AUTH_CHECKS_PER_S, 0.0)
        self.channels = ChannelTable(ports or _NoPorts(), randbytes)
        self._out: list[Output] = []

    # -- membership ----------------------------------------------------------------------

    def set_members(self, network_id: str, members: Mapping[VerifyKey, NodePublic], now: float,
                    admit_until: float | None = None) -> None:
        """Replace the member set (from a verified NetMap); drop sessions no longer allowed.

        `admit_until` (on the `now` clock): when the state these members come from expires. After
        that nobody logs in until a newer state is accepted; sessions already open keep going, as
        nodes keep their last configuration.
        """
        self.network_id = network_id
        self._members = dict(members)
        self._admit_until = admit_until
        for sess in list(self._by_conn.values()):
            if self._members.get(sess.identity) != sess.wg_key:
                self._out.append((sess.conn, marshal_frame(Denied(DenyReason.REVOKED))))
                self._drop(sess, "revoked")

    @property
    def sessions(self) -> int:
        return len(self._by_conn)

    def session_of(self, conn: ConnId) -> ServerSession | None:
        return self._by_conn.get(conn)

    def session_of_key(self, wg_key: bytes) -> ServerSession | None:
        return self._by_wg.get(wg_key)

    # -- output --------------------------------------------------------------------------

    def take_output(self) -> list[Output]:
        """Everything to send and every session event since the last call, in order."""
        out, self._out = self._out, []
        return out

    # -- input ---------------------------------------------------------------------------

    def receive_stun(self, conn: tuple[str, int], data: bytes, now: float) -> None:
        """Answer a STUN binding request from UDP address `conn` with that address (rate-limited
        like every answer to a sender no session vouches for)."""
        try:
            txid = stun.parse_binding_request(data)
        except stun.StunError:
            self.stats.drop("bad_stun")
            return
        self.stats.stun += 1
        self._reply_unauthenticated(conn, stun.marshal_binding_response(txid, addr_port(conn[0], conn[1])), now,
                                    self._stun)

    def receive(self, conn: ConnId, data: bytes, now: float) -> None:
        """One frame from `conn`. Garbage is counted and dropped; it never raises."""
        # Fast path: the data packet of a known session, without building a dataclass.
        sess = self._by_conn.get(conn)
        if sess is not None and data[:6] == SEND_PREFIX and len(data) >= KEY_END:
            self._forward(sess, data, now)
            return
        try:
            frame = parse_frame(data)
        except RelayParseError as exc:
            self.stats.drop(_parse_drop_reason(exc))
            if isinstance(exc, UnsupportedVersionError):
                self._reply_unauthenticated(conn, marshal_frame(Denied(DenyReason.UNSUPPORTED_VERSION)), now)
            return
        match frame:
            case ClientHello():
                self._reply_unauthenticated(conn, self._challenge(conn, frame.identity, frame.wg_key, now), now)
            case ChallengeResponse():
                self._admit(conn, frame, now)
            case SendPacket() | KeepAlive() | Ping() | Close() | ChannelRequest():
                if sess is None:
                    self._unknown_session(conn, now)
                    return
                if not hmac.compare_digest(sess.token, frame.token):
                    self.stats.drop("bad_token")  # silently: a spoofed source must not reset a session
                    return
                sess.last_seen = now
                if isinstance(frame, Ping):
                    self._out.append((conn, marshal_frame(Pong(frame.data))))
                elif isinstance(frame, Close):
                    self._drop(sess, "left")
                elif isinstance(frame, ChannelRequest):
                    peer = self._by_wg.get(frame.peer.raw)
                    self._channel_frames(self.channels.request(
                        Member(sess.wg_key.raw, conn), frame.peer.raw,
                        Member(peer.wg_key.raw, peer.conn) if peer is not None else None, now))
            case _:  # frames only a relay sends
                self.stats.drop("unexpected_frame")

    def receive_bind(self, port: int, addr: tuple[str, int], data: bytes, now: float) -> None:
        """A datagram on a channel port from an address the port is not bound to."""
        self._channel_frames(self.channels.receive_bind(port, addr, data, now))

    def connection_lost(self, conn: ConnId) -> None:
        sess = self._by_conn.get(conn)
        if sess is not None:
            self._drop(sess, "closed", hang_up=False)

    def handle_timer(self, now: float) -> None:
        for sess in list(self._by_conn.values()):
            if now - sess.last_seen > self.limits.session_idle_s:
                self._drop(sess, "idle")
        self._channel_frames(self.channels.expire(now))

    def next_deadline(self) -> float | None:
        if not self._by_conn:
            return None
        return min(s.last_seen for s in self._by_conn.values()) + self.limits.session_idle_s

    # -- internals -----------------------------------------------------------------------

    def _nonce(self, conn: ConnId, identity: VerifyKey, wg_key: NodePublic, stamp_ms: int) -> bytes:
        t = stamp_ms.to_bytes(NONCE_TIME_LEN, "big")
        mac = hmac.new(self._secret, repr(conn).encode() + b"\x00" + identity.raw + wg_key.raw + t,
                       hashlib.sha256).digest()
        return t + mac[: NONCE_LEN - NONCE_TIME_LEN]

    def _challenge(self, conn: ConnId, identity: VerifyKey, wg_key: NodePublic, now: float) -> bytes:
        # Stateless (like a DTLS cookie): a flood of hellos allocates nothing.
        nonce = self._nonce(conn, identity, wg_key, int(now * 1000))
        return marshal_frame(Challenge(nonce, self.relay_name))

    def _deny(self, conn: ConnId, reason: DenyReason, now: float) -> None:
        self.stats.auth_failed += 1
        self._reply_unauthenticated(conn, marshal_frame(Denied(reason)), now)

    def _reply_unauthenticated(self, conn: ConnId, frame: bytes, now: float,
                               overall: TokenBucket | None = None) -> None:
        """Send a reply to a frame no session vouches for, within the budgets of its source and of all."""
        source = conn[0] if isinstance(conn, tuple) else conn  # UDP: the address, whatever the port
        if self._unauth_by_source.take(source, now) and (overall or self._unauth).take(1, now):
            self._out.append((conn, frame))
        else:
            self.stats.drop("unauthenticated_reply_limited")

    def _admit(self, conn: ConnId, resp: ChallengeResponse, now: float) -> None:
        stamp_ms = int.from_bytes(resp.nonce[:NONCE_TIME_LEN], "big")
        expected = self._nonce(conn, resp.identity, resp.wg_key, stamp_ms)
        if not hmac.compare_digest(expected, resp.nonce):
            self._deny(conn, DenyReason.STALE_CHALLENGE, now)
            return
        if not 0 <= now - stamp_ms / 1000 <= CHALLENGE_LIFETIME_S:
            self._deny(conn, DenyReason.STALE_CHALLENGE, now)
            return
        if self._members.get(resp.identity) != resp.wg_key:
            self._deny(conn, DenyReason.AUTH_FAILED, now)
            return
        if self._admit_until is not None and now >= self._admit_until:
            # The membership comes from an expired state: it may list devices revoked since.
            self.stats.drop("state_expired")
            self._deny(conn, DenyReason.AUTH_FAILED, now)
            return
        if not self._auth_sources.take(conn, now) or not self._auth_checks.take(1.0, now):
            self.stats.drop("auth_rate_limited")  # silently: the client's handshake retries
            return
        msg = auth_message(self.network_id, self.relay_name, resp.nonce, resp.identity, resp.wg_key)
        if not resp.identity.verify(resp.signature, msg):
            self._deny(conn, DenyReason.AUTH_FAILED, now)
            return
        old = self._by_conn.get(conn)
        if old is not None:
            self._drop(old, "replaced", hang_up=False)
        other = self._by_wg.get(resp.wg_key.raw)
        if other is not None:  # the same device from a new address: the newest login wins
            self._drop(other, "replaced")
        if len(self._by_conn) >= self.limits.max_sessions:
            self._deny(conn, DenyReason.RELAY_FULL, now)
            return
        token = self._rand(TOKEN_LEN)
        sess = ServerSession(conn, resp.identity, resp.wg_key, token,
                             TokenBucket.full(self.limits.rate_bytes_per_s, self.limits.burst_bytes, now), now)
        self._by_conn[conn] = sess
        self._by_wg[resp.wg_key.raw] = sess
        self.stats.auth_ok += 1
        self._out.append(ClientAdmitted(conn, resp.identity, resp.wg_key))
        rsig = b""
        if self._signing_key is not None:
            rsig = self._signing_key.sign(welcome_message(self.network_id, self.relay_name, resp.nonce,
                                                          resp.identity, resp.wg_key, token))
        interval_ms = int(self.limits.ping_interval_s * 1000)
        self._out.append((conn, marshal_frame(Welcome(token, interval_ms, rsig))))

    def _unknown_session(self, conn: ConnId, now: float) -> None:
        self.stats.drop("no_session")
        if self._no_session.take(1, now):
            self._reply_unauthenticated(conn, marshal_frame(Denied(DenyReason.NO_SESSION)), now)

    def _forward(self, sess: ServerSession, data: bytes, now: float) -> None:
        # The hot path: plain operations only (every call here costs relayed throughput).
        n = len(data)
        if n > MAX_FRAME_LEN or (data[6] << 8 | data[7]) != n - HEADER_LEN:
            self.stats.drop("malformed")
            return
        if not hmac.compare_digest(data[HEADER_LEN:TOKEN_END], sess.token):
            self.stats.drop("bad_token")  # silently: a spoofed source must not reset a session
            return
        sess.last_seen = now
        stats = self.stats
        stats.packets_in += 1
        stats.bytes_in += n
        bucket = sess.bucket
        tokens = bucket.tokens + (now - bucket.stamp) * bucket.rate
        if tokens > bucket.burst:
            tokens = bucket.burst
        bucket.stamp = now
        if tokens < n:
            bucket.tokens = tokens
            stats.drop("rate_limited")
            return
        bucket.tokens = tokens - n
        dst = self._by_wg.get(data[TOKEN_END:KEY_END])
        if dst is None:
            stats.drop("no_destination")
            return
        # RecvPacket body = source key + payload: 16 bytes shorter than the SendPacket (token, dst
        # key) -> (src key), so the new length is n - 16 - HEADER_LEN + HEADER_LEN.
        stats.packets_out += 1
        stats.bytes_out += n - 8
        self._out.append((dst.conn, RECV_PREFIX + (n - 16).to_bytes(2, "big") + sess.wg_key.raw + data[KEY_END:]))

    def _drop(self, sess: ServerSession, reason: str, hang_up: bool = True) -> None:
        if sess.state is SessionState.CLOSED:
            return
        sess.state = SessionState.CLOSED
        if self._by_conn.get(sess.conn) is sess:
            del self._by_conn[sess.conn]
        if self._by_wg.get(sess.wg_key.raw) is sess:
            del self._by_wg[sess.wg_key.raw]
        self._out.append(ClientDropped(sess.conn, sess.identity, sess.wg_key, reason, hang_up))
        self._channel_frames(self.channels.member_gone(sess.wg_key.raw))

    def _channel_frames(self, notices: list[Notice]) -> None:
        self._out += [(n.conn, marshal_frame(ChannelInfo(NodePublic(n.peer), n.port, n.token, n.state)))
                      for n in notices]


class _NoPorts:
    """The allocator of a core without a shell for channels: every request is refused."""

    def open_pair(self) -> tuple[int, int] | None:
        return None

    def bind(self, port: int, addr: tuple[str, int]) -> None:
        raise LocalProtocolError("bind() on a relay without channel ports")

    def close_pair(self, ports: tuple[int, int]) -> None:
        raise LocalProtocolError("close_pair() on a relay without channel ports")


def _parse_drop_reason(exc: RelayParseError) -> str:
    return {
        BadMagicError: "bad_magic",
        UnsupportedVersionError: "bad_version",
        UnknownFrameTypeError: "unknown_type",
        TruncatedFrameError: "truncated",
        FrameTooLargeError: "too_large",
    }.get(type(exc), "malformed")

