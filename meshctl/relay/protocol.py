"""The meshctl relay protocol: frame codec and the two session state machines (sans-IO).

Every frame, one per UDP datagram, back to back on the TCP/TLS fallback (the length
field is the stream's length prefix)::

    magic "mcRL" (4) | version (1) | type (1) | body length (2, big endian) | body

The first magic byte has its top bits set to 01, so a relay frame is never taken for
STUN (top bits 00) or WireGuard (types 1..4 followed by three zero bytes).

Login (the relay keeps no state for a client until it has proved its identity key)::

    client -> ClientHello(identity key, wg key)
    relay  -> Challenge(nonce, relay name)       nonce = time || HMAC(relay secret, source, keys, time)
    client -> ChallengeResponse(identity key, wg key, nonce, signature over auth_message(...))
    relay  -> Welcome(session token, ping interval, relay signature or nothing) | Denied(reason)

Steady state::

    client -> SendPacket(token, destination wg key, opaque payload)
    relay  -> RecvPacket(source wg key, payload)                 to the destination's session
    client -> Ping(token, data) / KeepAlive(token);  relay -> Pong(data)
    client -> Close(token)                                          leaving: the relay forgets it now
    client -> ChannelRequest(token, peer wg key)                    the fast path (channels.py):
    relay  -> Channel(peer wg key, port, bind token, state)         to both members of the channel

The token (random, from Welcome) binds every later frame to the login, so an off-path sender
that spoofs a client's UDP source cannot use its session. Payloads are WireGuard or sealed
disco packets: the relay never looks inside them. An unauthenticated sender only ever gets
Challenge or Denied back, never a hint of who is connected.

Pure: no sockets, no clock (`now` is a monotonic float passed in), randomness injected.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Final, TypeAlias, assert_never

from meshctl.errors import ParseError
from meshctl.keys import KEY_LEN, SIG_LEN, NodePublic, SigningKey, VerifyKey
from meshctl.nat import stun
from meshctl.nat.addr import AddrPort
from meshctl.ratelimit import BucketTable
from meshctl.ratelimit import TokenBucket as TokenBucket  # re-exported: the relay's per-member limit
from meshctl.relay.channels import (
    BIND_TOKEN_LEN,
    ChannelState,
    ChannelTable,
    Member,
    Notice,
    PortAllocator,
)

# --- wire constants --------------------------------------------------------------------------

MAGIC: Final = b"mcRL"
VERSION: Final = 1
HEADER_LEN: Final = 8  # magic 4, version 1, type 1, length 2
_HEADER: Final = struct.Struct("!4sBBH")
# A frame must fit one UDP datagram: 65535 - 8 (UDP header) - 20 (IPv4 header).
MAX_FRAME_LEN: Final = 65_507
MAX_BODY_LEN: Final = MAX_FRAME_LEN - HEADER_LEN
TOKEN_LEN: Final = 8  # 64 random bits: an off-path guess succeeds once in 2**64 tries
NONCE_LEN: Final = 32  # 8 bytes time (ms) + 24 bytes truncated HMAC-SHA256
_NONCE_TIME_LEN: Final = 8
PING_DATA_LEN: Final = 8
# A DNS label, like every other name in the coordination repository.
MAX_RELAY_NAME_LEN: Final = 63
# SendPacket carries token + key in front of the payload; the rest of a datagram is payload.
MAX_PAYLOAD_LEN: Final = MAX_BODY_LEN - TOKEN_LEN - KEY_LEN
# A TCP reader holds at most one partial frame plus one read; nothing grows without bound.
MAX_STREAM_BUFFER: Final = 2 * MAX_FRAME_LEN

AUTH_DOMAIN: Final = b"meshctl relay auth v1\x00"
WELCOME_DOMAIN: Final = b"meshctl relay welcome v1\x00"


class FrameType(IntEnum):
    CLIENT_HELLO = 0x01
    CHALLENGE = 0x02
    CHALLENGE_RESPONSE = 0x03
    WELCOME = 0x04
    DENIED = 0x05
    SEND_PACKET = 0x06
    RECV_PACKET = 0x07
    KEEP_ALIVE = 0x08
    PING = 0x09
    PONG = 0x0A
    CLOSE = 0x0B
    CHANNEL_REQUEST = 0x0C
    CHANNEL = 0x0D


class DenyReason(IntEnum):
    """Why the relay refused; deliberately coarse so a refusal reveals nothing about others."""

    AUTH_FAILED = 1  # not a current member, wrong key pair or bad signature (indistinguishable)
    STALE_CHALLENGE = 2  # the nonce expired or was not ours: start again with a hello
    NO_SESSION = 3  # the relay does not know this session (it restarted, or it expired)
    REVOKED = 4  # the member was removed from the coordination repository
    UNSUPPORTED_VERSION = 5
    RELAY_FULL = 6


# --- errors ----------------------------------------------------------------------------------


class RelayParseError(ParseError):
    """A relay frame was dropped; the subclass says why (the shell counts and drops)."""


class BadMagicError(RelayParseError):
    """Not a relay frame (wrong magic)."""


class UnsupportedVersionError(RelayParseError):
    """A protocol version this code does not speak."""


class UnknownFrameTypeError(RelayParseError):
    """A frame type byte this version does not define."""


class TruncatedFrameError(RelayParseError):
    """Shorter than its header, or than the length its header announces."""


class FrameTooLargeError(RelayParseError):
    """Longer than MAX_FRAME_LEN, or trailing bytes after a datagram's frame."""


class MalformedFrameError(RelayParseError):
    """The body has the wrong size or a bad field for its type."""


class LocalProtocolError(Exception):
    """We misused a state machine (a bug in the caller, never caused by the peer)."""


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientHello:
    identity: VerifyKey
    wg_key: NodePublic


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes
    relay_name: str


@dataclass(frozen=True, slots=True)
class ChallengeResponse:
    identity: VerifyKey
    wg_key: NodePublic
    nonce: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Welcome:
    token: bytes
    ping_interval_ms: int
    relay_signature: bytes = b""  # empty when the relay has no identity key


@dataclass(frozen=True, slots=True)
class Denied:
    reason: DenyReason


@dataclass(frozen=True, slots=True)
class SendPacket:
    token: bytes
    dst: NodePublic
    payload: bytes


@dataclass(frozen=True, slots=True)
class RecvPacket:
    src: NodePublic
    payload: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    token: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    token: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    token: bytes


@dataclass(frozen=True, slots=True)
class ChannelRequest:
    token: bytes
    peer: NodePublic


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """The relay's word on this member's channel to `peer` (port 0 and no token when CLOSED)."""

    peer: NodePublic
    port: int
    bind_token: bytes
    state: ChannelState


Frame: TypeAlias = (ClientHello | Challenge | ChallengeResponse | Welcome | Denied | SendPacket | RecvPacket
                    | KeepAlive | Ping | Pong | Close | ChannelRequest | ChannelInfo)


def _frame(ftype: FrameType, body: bytes) -> bytes:
    if len(body) > MAX_BODY_LEN:
        raise LocalProtocolError(f"frame body of {len(body)} bytes exceeds {MAX_BODY_LEN}")
    return _HEADER.pack(MAGIC, VERSION, ftype, len(body)) + body


def _check_len(value: bytes, n: int, what: str) -> None:
    if len(value) != n:
        raise LocalProtocolError(f"{what} must be {n} bytes, got {len(value)}")


def marshal_frame(frame: Frame) -> bytes:
    """The bytes of one frame (raises LocalProtocolError for a value that cannot be sent)."""
    match frame:
        case ClientHello(identity, wg_key):
            return _frame(FrameType.CLIENT_HELLO, identity.raw + wg_key.raw)
        case Challenge(nonce, name):
            _check_len(nonce, NONCE_LEN, "nonce")
            raw = name.encode()
            if len(raw) > MAX_RELAY_NAME_LEN or not name.isascii():
                raise LocalProtocolError(f"relay name must be ASCII, at most {MAX_RELAY_NAME_LEN} bytes")
            return _frame(FrameType.CHALLENGE, nonce + bytes([len(raw)]) + raw)
        case ChallengeResponse(identity, wg_key, nonce, sig):
            _check_len(nonce, NONCE_LEN, "nonce")
            _check_len(sig, SIG_LEN, "signature")
            return _frame(FrameType.CHALLENGE_RESPONSE, identity.raw + wg_key.raw + nonce + sig)
        case Welcome(token, interval, rsig):
            _check_len(token, TOKEN_LEN, "token")
            if rsig:
                _check_len(rsig, SIG_LEN, "relay signature")
            if not 0 < interval < 2**32:
                raise LocalProtocolError("ping interval out of range")
            return _frame(FrameType.WELCOME, token + struct.pack("!I", interval) + rsig)
        case Denied(reason):
            return _frame(FrameType.DENIED, bytes([reason]))
        case SendPacket(token, dst, payload):
            _check_len(token, TOKEN_LEN, "token")
            return _frame(FrameType.SEND_PACKET, token + dst.raw + payload)
        case RecvPacket(src, payload):
            return _frame(FrameType.RECV_PACKET, src.raw + payload)
        case KeepAlive(token):
            _check_len(token, TOKEN_LEN, "token")
            return _frame(FrameType.KEEP_ALIVE, token)
        case Ping(token, data):
            _check_len(token, TOKEN_LEN, "token")
            _check_len(data, PING_DATA_LEN, "ping data")
            return _frame(FrameType.PING, token + data)
        case Pong(data):
            _check_len(data, PING_DATA_LEN, "pong data")
            return _frame(FrameType.PONG, data)
        case Close(token):
            _check_len(token, TOKEN_LEN, "token")
            return _frame(FrameType.CLOSE, token)
        case ChannelRequest(token, peer):
            _check_len(token, TOKEN_LEN, "token")
            return _frame(FrameType.CHANNEL_REQUEST, token + peer.raw)
        case ChannelInfo(peer, port, bind_token, state):
            if state is ChannelState.CLOSED:
                port, bind_token = 0, bytes(BIND_TOKEN_LEN)
            _check_len(bind_token, BIND_TOKEN_LEN, "bind token")
            if not 0 <= port <= 0xFFFF or (port == 0) != (state is ChannelState.CLOSED):
                raise LocalProtocolError(f"channel port {port} with state {state.name}")
            return _frame(FrameType.CHANNEL, peer.raw + struct.pack("!H", port) + bind_token + bytes([state]))
        case _:
            assert_never(frame)


def looks_like_frame(data: bytes) -> bool:
    """Cheap demux test (a relay port also receives STUN)."""
    return data[:4] == MAGIC


def parse_header(data: bytes) -> tuple[FrameType, int]:
    """(type, body length) of the frame starting at data[0]; needs HEADER_LEN bytes."""
    if len(data) < HEADER_LEN:
        raise TruncatedFrameError(f"relay frame shorter than its {HEADER_LEN}-byte header")
    magic, version, ftype, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMagicError("not a relay frame")
    if version != VERSION:
        raise UnsupportedVersionError(f"relay protocol version {version} (this relay speaks {VERSION})")
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise UnknownFrameTypeError(f"unknown relay frame type 0x{ftype:02x}") from None
    return kind, length


def _exact(body: bytes, n: int, kind: FrameType) -> None:
    if len(body) != n:
        raise MalformedFrameError(f"{kind.name} body must be {n} bytes, got {len(body)}")


def _min(body: bytes, n: int, kind: FrameType) -> None:
    if len(body) < n:
        raise MalformedFrameError(f"{kind.name} body must be at least {n} bytes, got {len(body)}")


def _identity(raw: bytes) -> VerifyKey:
    return VerifyKey(raw)  # 32 bytes, checked by the caller; any 32 bytes is a well-formed key


def parse_body(kind: FrameType, body: bytes) -> Frame:
    """Decode one frame body of a known type."""
    k = KEY_LEN
    match kind:
        case FrameType.CLIENT_HELLO:
            _exact(body, 2 * k, kind)
            return ClientHello(_identity(body[:k]), NodePublic(body[k:]))
        case FrameType.CHALLENGE:
            _min(body, NONCE_LEN + 1, kind)
            n = body[NONCE_LEN]
            _exact(body, NONCE_LEN + 1 + n, kind)
            raw_name = body[NONCE_LEN + 1 :]
            if n > MAX_RELAY_NAME_LEN or not raw_name.isascii():
                raise MalformedFrameError("CHALLENGE relay name must be ASCII, at most 63 bytes")
            return Challenge(body[:NONCE_LEN], raw_name.decode("ascii"))
        case FrameType.CHALLENGE_RESPONSE:
            _exact(body, 2 * k + NONCE_LEN + SIG_LEN, kind)
            return ChallengeResponse(_identity(body[:k]), NodePublic(body[k : 2 * k]),
                                     body[2 * k : 2 * k + NONCE_LEN], body[2 * k + NONCE_LEN :])
        case FrameType.WELCOME:
            if len(body) not in (TOKEN_LEN + 4, TOKEN_LEN + 4 + SIG_LEN):
                raise MalformedFrameError(f"WELCOME body has a bad size ({len(body)} bytes)")
            (interval,) = struct.unpack_from("!I", body, TOKEN_LEN)
            if interval == 0:
                raise MalformedFrameError("WELCOME ping interval is zero")
            return Welcome(body[:TOKEN_LEN], interval, body[TOKEN_LEN + 4 :])
        case FrameType.DENIED:
            _exact(body, 1, kind)
            try:
                return Denied(DenyReason(body[0]))
            except ValueError:
                raise MalformedFrameError(f"DENIED reason {body[0]} is unknown") from None
        case FrameType.SEND_PACKET:
            _min(body, TOKEN_LEN + k, kind)
            return SendPacket(body[:TOKEN_LEN], NodePublic(body[TOKEN_LEN : TOKEN_LEN + k]),
                              body[TOKEN_LEN + k :])
        case FrameType.RECV_PACKET:
            _min(body, k, kind)
            return RecvPacket(NodePublic(body[:k]), body[k:])
        case FrameType.KEEP_ALIVE:
            _exact(body, TOKEN_LEN, kind)
            return KeepAlive(body)
        case FrameType.PING:
            _exact(body, TOKEN_LEN + PING_DATA_LEN, kind)
            return Ping(body[:TOKEN_LEN], body[TOKEN_LEN:])
        case FrameType.PONG:
            _exact(body, PING_DATA_LEN, kind)
            return Pong(body)
        case FrameType.CLOSE:
            _exact(body, TOKEN_LEN, kind)
            return Close(body)
        case FrameType.CHANNEL_REQUEST:
            _exact(body, TOKEN_LEN + k, kind)
            return ChannelRequest(body[:TOKEN_LEN], NodePublic(body[TOKEN_LEN:]))
        case FrameType.CHANNEL:
            _exact(body, k + 2 + BIND_TOKEN_LEN + 1, kind)
            (port,) = struct.unpack_from("!H", body, k)
            try:
                state = ChannelState(body[-1])
            except ValueError:
                raise MalformedFrameError(f"CHANNEL state {body[-1]} is unknown") from None
            if (port == 0) != (state is ChannelState.CLOSED):
                raise MalformedFrameError(f"CHANNEL port {port} with state {state.name}")
            return ChannelInfo(NodePublic(body[:k]), port, body[k + 2 : k + 2 + BIND_TOKEN_LEN], state)
        case _:
            assert_never(kind)


def parse_frame(data: bytes) -> Frame:
    """Decode exactly one frame (a whole datagram). Raises a RelayParseError subclass."""
    if len(data) > MAX_FRAME_LEN:
        raise FrameTooLargeError(f"relay frame of {len(data)} bytes exceeds {MAX_FRAME_LEN}")
    kind, length = parse_header(data)
    if len(data) < HEADER_LEN + length:
        raise TruncatedFrameError(f"relay frame announces {length} body bytes, has {len(data) - HEADER_LEN}")
    if len(data) > HEADER_LEN + length:
        raise FrameTooLargeError(f"{len(data) - HEADER_LEN - length} trailing bytes after a relay frame")
    return parse_body(kind, bytes(data[HEADER_LEN:]))


class FrameDecoder:
    """Split a byte stream (TCP/TLS fallback) into whole frames, in bounded memory."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Whole frames completed by `data`. Raises RelayParseError; the stream is then unusable."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER_LEN:
            _kind, length = parse_header(bytes(self._buf[:HEADER_LEN]))
            end = HEADER_LEN + length
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[:end]))
            del self._buf[:end]
        if len(self._buf) > MAX_STREAM_BUFFER:  # unreachable with a valid header; defence in depth
            raise FrameTooLargeError("relay stream buffer overflow")
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# --- authentication messages -------------------------------------------------------------------


def auth_message(network_id: str, relay_name: str, nonce: bytes, identity: VerifyKey, wg_key: NodePublic) -> bytes:
    """What a client signs: domain, mesh, relay and nonce, so it cannot be replayed elsewhere."""
    return (AUTH_DOMAIN + network_id.encode() + b"\x00" + relay_name.encode() + b"\x00" + nonce
            + identity.raw + wg_key.raw)


def welcome_message(network_id: str, relay_name: str, nonce: bytes, identity: VerifyKey, wg_key: NodePublic,
                    token: bytes) -> bytes:
    """What a relay with an identity key signs, so a client knows it reached the listed relay."""
    return (WELCOME_DOMAIN + network_id.encode() + b"\x00" + relay_name.encode() + b"\x00" + nonce
            + identity.raw + wg_key.raw + token)


# --- server side -------------------------------------------------------------------------------

ConnId: TypeAlias = Hashable  # the shell's name for a client: a UDP (ip, port) or a TCP connection

CHALLENGE_LIFETIME_S: Final = 10.0  # a nonce older than this is refused (bounds replays)
SESSION_IDLE_TIMEOUT_S: Final = 45.0  # clients ping every PING_INTERVAL_S; three missed pings and more
PING_INTERVAL_S: Final = 2.0  # below the 25 s NAT keepalive; a restarted relay is noticed within it
DEFAULT_RATE_BYTES_PER_S: Final = 125_000_000  # 1 Gbit/s per client
DEFAULT_BURST_BYTES: Final = 4 * 1024 * 1024  # a few ms of line rate; absorbs TCP bursts
DEFAULT_MAX_SESSIONS: Final = 10_000
# Replies to frames of unknown sessions are capped so a relay cannot be turned into a reflector.
NO_SESSION_REPLIES_PER_S: Final = 200.0
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


ServerEvent: TypeAlias = ClientAdmitted | ClientDropped


@dataclass(slots=True)
class RelayStats:
    """Counters the shell exports (Prometheus names in server.py)."""

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


Output: TypeAlias = tuple[ConnId, bytes]


class RelayCore:
    """Admission and forwarding for every client of one relay (sans-IO).

    Inputs: `receive(conn, data, now)` (one datagram or one whole stream frame),
    `receive_stun(addr, data)`, `receive_bind(port, addr, data, now)` (a channel port),
    `connection_lost(conn)`, `set_members(...)`, `handle_timer(now)`.
    Outputs: lists of (conn, bytes) to send, `outbox` (frames a drop produced: take_outbox()),
    `events` to log, `closed` conns the shell must hang up (streams) and `stats`.
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
        self.events: deque[ServerEvent] = deque(maxlen=10_000)
        self.closed: list[ConnId] = []
        self.stats = RelayStats()
        self._no_session = TokenBucket.full(NO_SESSION_REPLIES_PER_S, NO_SESSION_REPLIES_PER_S, 0.0)
        self._auth_sources: BucketTable[ConnId] = BucketTable(AUTH_CHECKS_PER_SOURCE_PER_S,
                                                              AUTH_CHECKS_PER_SOURCE_BURST, MAX_AUTH_SOURCES)
        self._auth_checks = TokenBucket.full(AUTH_CHECKS_PER_S, AUTH_CHECKS_PER_S, 0.0)
        self.channels = ChannelTable(ports or _NoPorts(), randbytes)
        self.outbox: list[Output] = []

    # -- membership ----------------------------------------------------------------------

    def set_members(self, network_id: str, members: Mapping[VerifyKey, NodePublic], now: float) -> list[Output]:
        """Replace the member set (from a verified NetMap); drop sessions no longer allowed."""
        self.network_id = network_id
        self._members = dict(members)
        out: list[Output] = []
        for sess in list(self._by_conn.values()):
            if self._members.get(sess.identity) != sess.wg_key:
                out.append((sess.conn, marshal_frame(Denied(DenyReason.REVOKED))))
                self._drop(sess, "revoked")
        return out

    @property
    def sessions(self) -> int:
        return len(self._by_conn)

    def session_of(self, conn: ConnId) -> ServerSession | None:
        return self._by_conn.get(conn)

    def session_of_key(self, wg_key: bytes) -> ServerSession | None:
        return self._by_wg.get(wg_key)

    def take_outbox(self) -> list[Output]:
        out, self.outbox = self.outbox, []
        return out

    # -- input ---------------------------------------------------------------------------

    def receive_stun(self, addr: AddrPort, data: bytes) -> bytes | None:
        """Answer a STUN binding request with the sender's address (None: not one, dropped)."""
        try:
            txid = stun.parse_binding_request(data)
        except stun.StunError:
            self.stats.drop("bad_stun")
            return None
        self.stats.stun += 1
        return stun.marshal_binding_response(txid, addr)

    def receive(self, conn: ConnId, data: bytes, now: float) -> list[Output]:
        """One frame from `conn`. Garbage is counted and dropped; it never raises."""
        # Fast path: the data packet of a known session, without building a dataclass.
        sess = self._by_conn.get(conn)
        if sess is not None and data[:6] == _SEND_HEADER and len(data) >= _KEY_END:
            return self._forward(sess, data, now)
        try:
            frame = parse_frame(data)
        except RelayParseError as exc:
            self.stats.drop(_parse_drop_reason(exc))
            if isinstance(exc, UnsupportedVersionError):
                return [(conn, marshal_frame(Denied(DenyReason.UNSUPPORTED_VERSION)))]
            return []
        match frame:
            case ClientHello():
                return [(conn, self._challenge(conn, frame.identity, frame.wg_key, now))]
            case ChallengeResponse():
                return self._admit(conn, frame, now)
            case SendPacket() | KeepAlive() | Ping() | Close() | ChannelRequest():
                if sess is None:
                    return self._unknown_session(conn, now)
                if not hmac.compare_digest(sess.token, frame.token):
                    self.stats.drop("bad_token")  # silently: a spoofed source must not reset a session
                    return []
                sess.last_seen = now
                if isinstance(frame, Ping):
                    return [(conn, marshal_frame(Pong(frame.data)))]
                if isinstance(frame, Close):
                    self._drop(sess, "left")
                if isinstance(frame, ChannelRequest):
                    peer = self._by_wg.get(frame.peer.raw)
                    return _channel_frames(self.channels.request(
                        Member(sess.wg_key.raw, conn), frame.peer.raw,
                        Member(peer.wg_key.raw, peer.conn) if peer is not None else None, now))
                return []
            case _:  # frames only a relay sends
                self.stats.drop("unexpected_frame")
                return []

    def receive_bind(self, port: int, addr: tuple[str, int], data: bytes, now: float) -> list[Output]:
        """A datagram on a channel port from an address the port is not bound to."""
        return _channel_frames(self.channels.receive_bind(port, addr, data, now))

    def connection_lost(self, conn: ConnId) -> None:
        sess = self._by_conn.get(conn)
        if sess is not None:
            self._drop(sess, "closed", hang_up=False)

    def handle_timer(self, now: float) -> list[Output]:
        for sess in list(self._by_conn.values()):
            if now - sess.last_seen > self.limits.session_idle_s:
                self._drop(sess, "idle")
        return self.take_outbox() + _channel_frames(self.channels.expire(now))

    def next_deadline(self) -> float | None:
        if not self._by_conn:
            return None
        return min(s.last_seen for s in self._by_conn.values()) + self.limits.session_idle_s

    # -- internals -----------------------------------------------------------------------

    def _nonce(self, conn: ConnId, identity: VerifyKey, wg_key: NodePublic, stamp_ms: int) -> bytes:
        t = stamp_ms.to_bytes(_NONCE_TIME_LEN, "big")
        mac = hmac.new(self._secret, repr(conn).encode() + b"\x00" + identity.raw + wg_key.raw + t,
                       hashlib.sha256).digest()
        return t + mac[: NONCE_LEN - _NONCE_TIME_LEN]

    def _challenge(self, conn: ConnId, identity: VerifyKey, wg_key: NodePublic, now: float) -> bytes:
        # Stateless (like a DTLS cookie): a flood of hellos allocates nothing.
        nonce = self._nonce(conn, identity, wg_key, int(now * 1000))
        return marshal_frame(Challenge(nonce, self.relay_name))

    def _deny(self, conn: ConnId, reason: DenyReason) -> list[Output]:
        self.stats.auth_failed += 1
        return [(conn, marshal_frame(Denied(reason)))]

    def _admit(self, conn: ConnId, resp: ChallengeResponse, now: float) -> list[Output]:
        stamp_ms = int.from_bytes(resp.nonce[:_NONCE_TIME_LEN], "big")
        expected = self._nonce(conn, resp.identity, resp.wg_key, stamp_ms)
        if not hmac.compare_digest(expected, resp.nonce):
            return self._deny(conn, DenyReason.STALE_CHALLENGE)
        if not 0 <= now - stamp_ms / 1000 <= CHALLENGE_LIFETIME_S:
            return self._deny(conn, DenyReason.STALE_CHALLENGE)
        if self._members.get(resp.identity) != resp.wg_key:
            return self._deny(conn, DenyReason.AUTH_FAILED)
        if not self._auth_sources.take(conn, now) or not self._auth_checks.take(1.0, now):
            self.stats.drop("auth_rate_limited")  # silently: the client's handshake retries
            return []
        msg = auth_message(self.network_id, self.relay_name, resp.nonce, resp.identity, resp.wg_key)
        if not resp.identity.verify(resp.signature, msg):
            return self._deny(conn, DenyReason.AUTH_FAILED)
        out: list[Output] = []
        old = self._by_conn.get(conn)
        if old is not None:
            self._drop(old, "replaced", hang_up=False)
        other = self._by_wg.get(resp.wg_key.raw)
        if other is not None:  # the same device from a new address: the newest login wins
            self._drop(other, "replaced")
        if len(self._by_conn) >= self.limits.max_sessions:
            return self._deny(conn, DenyReason.RELAY_FULL)
        token = self._rand(TOKEN_LEN)
        sess = ServerSession(conn, resp.identity, resp.wg_key, token,
                             TokenBucket.full(self.limits.rate_bytes_per_s, self.limits.burst_bytes, now), now)
        self._by_conn[conn] = sess
        self._by_wg[resp.wg_key.raw] = sess
        self.stats.auth_ok += 1
        self.events.append(ClientAdmitted(conn, resp.identity, resp.wg_key))
        rsig = b""
        if self._signing_key is not None:
            rsig = self._signing_key.sign(welcome_message(self.network_id, self.relay_name, resp.nonce,
                                                          resp.identity, resp.wg_key, token))
        interval_ms = int(self.limits.ping_interval_s * 1000)
        out.append((conn, marshal_frame(Welcome(token, interval_ms, rsig))))
        return out

    def _unknown_session(self, conn: ConnId, now: float) -> list[Output]:
        self.stats.drop("no_session")
        if self._no_session.take(1, now):
            return [(conn, marshal_frame(Denied(DenyReason.NO_SESSION)))]
        return []

    def _forward(self, sess: ServerSession, data: bytes, now: float) -> list[Output]:
        # The hot path: plain operations only (every call here costs relayed throughput).
        n = len(data)
        if n > MAX_FRAME_LEN or (data[6] << 8 | data[7]) != n - HEADER_LEN:
            self.stats.drop("malformed")
            return []
        if not hmac.compare_digest(data[HEADER_LEN:_TOKEN_END], sess.token):
            self.stats.drop("bad_token")  # silently: a spoofed source must not reset a session
            return []
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
            return []
        bucket.tokens = tokens - n
        dst = self._by_wg.get(data[_TOKEN_END:_KEY_END])
        if dst is None:
            stats.drop("no_destination")
            return []
        # RecvPacket body = source key + payload: 16 bytes shorter than the SendPacket (token, dst
        # key) -> (src key), so the new length is n - 16 - HEADER_LEN + HEADER_LEN.
        frame = _RECV_PREFIX + (n - 16).to_bytes(2, "big") + sess.wg_key.raw + data[_KEY_END:]
        stats.packets_out += 1
        stats.bytes_out += n - 8
        return [(dst.conn, frame)]

    def _drop(self, sess: ServerSession, reason: str, hang_up: bool = True) -> None:
        if sess.state is SessionState.CLOSED:
            return
        sess.state = SessionState.CLOSED
        if self._by_conn.get(sess.conn) is sess:
            del self._by_conn[sess.conn]
        if self._by_wg.get(sess.wg_key.raw) is sess:
            del self._by_wg[sess.wg_key.raw]
        if hang_up:
            self.closed.append(sess.conn)
        self.events.append(ClientDropped(sess.conn, sess.identity, sess.wg_key, reason))
        self.outbox += _channel_frames(self.channels.member_gone(sess.wg_key.raw))


class _NoPorts:
    """The allocator of a core without a shell for channels: every request is refused."""

    def open_pair(self) -> tuple[int, int] | None:
        return None

    def bind(self, port: int, addr: tuple[str, int]) -> None:
        raise LocalProtocolError("bind() on a relay without channel ports")

    def close_pair(self, ports: tuple[int, int]) -> None:
        raise LocalProtocolError("close_pair() on a relay without channel ports")


def _channel_frames(notices: list[Notice]) -> list[Output]:
    return [(n.conn, marshal_frame(ChannelInfo(NodePublic(n.peer), n.port, n.token, n.state))) for n in notices]


_SEND_HEADER: Final = MAGIC + bytes([VERSION, FrameType.SEND_PACKET])
_RECV_PREFIX: Final = MAGIC + bytes([VERSION, FrameType.RECV_PACKET])
_TOKEN_END: Final = HEADER_LEN + TOKEN_LEN
_KEY_END: Final = _TOKEN_END + KEY_LEN
_RECV_MIN: Final = HEADER_LEN + KEY_LEN


def _parse_drop_reason(exc: RelayParseError) -> str:
    return {
        BadMagicError: "bad_magic",
        UnsupportedVersionError: "bad_version",
        UnknownFrameTypeError: "unknown_type",
        TruncatedFrameError: "truncated",
        FrameTooLargeError: "too_large",
    }.get(type(exc), "malformed")


# --- client side -------------------------------------------------------------------------------

HELLO_RETRY_S: Final = 1.0  # a lost UDP hello is resent this often during the handshake
HANDSHAKE_TIMEOUT_S: Final = 5.0  # then the shell reconnects (with backoff, maybe over TCP)
SILENCE_TIMEOUT_S: Final = 3 * PING_INTERVAL_S + 1.0  # three unanswered pings: the relay is gone
MAX_PENDING_PINGS: Final = 16


class ClientState(Enum):
    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    RESPONSE_SENT = "response_sent"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Connected:
    ping_interval_s: float
    relay_verified: bool  # the Welcome carried a valid signature by the expected relay key


@dataclass(frozen=True, slots=True)
class Refused:
    reason: DenyReason


@dataclass(frozen=True, slots=True)
class PacketReceived:
    src: NodePublic
    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    rtt_s: float


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelChanged:
    info: ChannelInfo


ClientEvent: TypeAlias = Connected | Refused | PacketReceived | PongReceived | ConnectionLost | ChannelChanged


class ClientSession:
    """One login to one relay, client side (sans-IO). One session per transport connection:
    after ConnectionLost or Refused, the shell makes a new session (with backoff)."""

    def __init__(self, identity: SigningKey, wg_key: NodePublic, network_id: str,
                 randbytes: Callable[[int], bytes], relay_name: str | None = None,
                 relay_key: VerifyKey | None = None) -> None:
        self._identity = identity
        self._identity_pub = identity.public()
        self.wg_key = wg_key
        self.network_id = network_id
        self._rand = randbytes
        self.expected_relay_name = relay_name
        self.relay_key = relay_key
        self.state = ClientState.IDLE
        self._out: list[bytes] = []
        self._events: deque[ClientEvent] = deque()
        self._token = b""
        self._send_prefix = b""
        self._started = 0.0
        self._retry_at: float | None = None
        self._last_rx = 0.0
        self._ping_interval = PING_INTERVAL_S
        self._next_ping: float | None = None
        self._pings: dict[bytes, float] = {}
        self.relay_name: str | None = None
        self._nonce = b""

    # -- commands ------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError(f"connect() in state {self.state.value}")
        self.state = ClientState.HELLO_SENT
        self._started = now
        self._send_hello(now)

    def send_packet(self, dst: NodePublic, payload: bytes) -> bytes | None:
        """The frame carrying `payload` to `dst` (None when not connected or too large)."""
        if self.state is not ClientState.CONNECTED or len(payload) > MAX_PAYLOAD_LEN:
            return None
        return _HEADER.pack(MAGIC, VERSION, FrameType.SEND_PACKET, TOKEN_LEN + KEY_LEN + len(payload)) + \
            self._token + dst.raw + payload

    def ping(self, now: float) -> None:
        if self.state is not ClientState.CONNECTED:
            raise LocalProtocolError("ping() before the session is connected")
        data = self._rand(PING_DATA_LEN)
        if len(self._pings) >= MAX_PENDING_PINGS:
            self._pings.pop(next(iter(self._pings)))
        self._pings[data] = now
        self._out.append(marshal_frame(Ping(self._token, data)))

    def request_channel(self, peer: NodePublic) -> bool:
        """Ask for a channel to `peer` (answered by a ChannelChanged event); False when not connected."""
        if self.state is not ClientState.CONNECTED:
            return False
        self._out.append(marshal_frame(ChannelRequest(self._token, peer)))
        return True

    def close(self) -> None:
        """Leave: queue a Close frame (when logged in) so the relay forgets the session at once."""
        if self.state is ClientState.CONNECTED:
            self._out.append(marshal_frame(Close(self._token)))
        self.state = ClientState.CLOSED

    # -- input ---------------------------------------------------------------------------

    def receive_frame(self, data: bytes, now: float) -> None:
        """One whole frame from the relay. Garbage is dropped (it never raises)."""
        if self.state in (ClientState.IDLE, ClientState.CLOSED):
            return
        try:
            frame = parse_frame(data)
        except RelayParseError:
            return
        match frame:
            case RecvPacket(src, payload) if self.state is ClientState.CONNECTED:
                self._last_rx = now
                self._events.append(PacketReceived(src, payload))
            case Challenge(nonce, name) if self.state is ClientState.HELLO_SENT:
                if self.expected_relay_name is not None and name != self.expected_relay_name:
                    return  # a challenge from another relay: signing it would let that relay log in as us
                self.relay_name = name
                self._nonce = nonce
                msg = auth_message(self.network_id, name, nonce, self._identity_pub, self.wg_key)
                self._out.append(marshal_frame(ChallengeResponse(self._identity_pub, self.wg_key, nonce,
                                                                 self._identity.sign(msg))))
                self.state = ClientState.RESPONSE_SENT
                self._retry_at = now + HELLO_RETRY_S
            case Welcome(token, interval_ms, rsig) if self.state is ClientState.RESPONSE_SENT:
                verified = False
                if self.relay_key is not None:
                    msg = welcome_message(self.network_id, self.relay_name or "", self._nonce,
                                          self._identity_pub, self.wg_key, token)
                    if not rsig or not self.relay_key.verify(rsig, msg):
                        return  # not the relay listed in the repository: keep waiting, then time out
                    verified = True
                self._token = token
                self._ping_interval = max(interval_ms / 1000, 0.05)
                self.state = ClientState.CONNECTED
                self._last_rx = now
                self._retry_at = None
                self._next_ping = now + self._ping_interval
                self._events.append(Connected(self._ping_interval, verified))
            case Denied(reason):
                if reason is DenyReason.STALE_CHALLENGE and self.state is ClientState.RESPONSE_SENT:
                    self.state = ClientState.HELLO_SENT
                    self._send_hello(now)
                    return
                self.state = ClientState.CLOSED
                if reason is DenyReason.NO_SESSION:
                    self._events.append(ConnectionLost("the relay does not know this session"))
                else:
                    self._events.append(Refused(reason))
            case Pong(data) if self.state is ClientState.CONNECTED:
                self._last_rx = now
                sent = self._pings.pop(data, None)
                if sent is not None:
                    self._events.append(PongReceived(now - sent))
            case ChannelInfo() if self.state is ClientState.CONNECTED:
                self._last_rx = now
                self._events.append(ChannelChanged(frame))
            case _:
                return

    def take_packet(self, data: bytes, now: float) -> tuple[bytes, bytes] | None:
        """Fast path for the common frame: a well-formed RecvPacket while connected gives
        (source key bytes, payload) with no event; anything else gives None (use receive_frame)."""
        if (data[:6] == _RECV_PREFIX and self.state is ClientState.CONNECTED and len(data) >= _RECV_MIN
                and (data[6] << 8 | data[7]) == len(data) - HEADER_LEN):
            self._last_rx = now
            return data[HEADER_LEN:_RECV_MIN], data[_RECV_MIN:]
        return None

    def handle_timer(self, now: float) -> None:
        if self.state in (ClientState.HELLO_SENT, ClientState.RESPONSE_SENT):
            if now - self._started >= HANDSHAKE_TIMEOUT_S:
                self.state = ClientState.CLOSED
                self._events.append(ConnectionLost("handshake timed out"))
            elif self._retry_at is not None and now >= self._retry_at:
                self.state = ClientState.HELLO_SENT
                self._send_hello(now)
        elif self.state is ClientState.CONNECTED:
            if now - self._last_rx >= SILENCE_TIMEOUT_S:
                self.state = ClientState.CLOSED
                self._events.append(ConnectionLost("the relay stopped answering"))
            elif self._next_ping is not None and now >= self._next_ping:
                self.ping(now)
                self._next_ping = now + self._ping_interval

    # -- output --------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterable[ClientEvent]:
        while self._events:
            yield self._events.popleft()

    def next_deadline(self) -> float | None:
        if self.state in (ClientState.HELLO_SENT, ClientState.RESPONSE_SENT):
            limit = self._started + HANDSHAKE_TIMEOUT_S
            return min(limit, self._retry_at) if self._retry_at is not None else limit
        if self.state is ClientState.CONNECTED:
            silence = self._last_rx + SILENCE_TIMEOUT_S
            return min(silence, self._next_ping) if self._next_ping is not None else silence
        return None

    def _send_hello(self, now: float) -> None:
        self._out.append(marshal_frame(ClientHello(self._identity_pub, self.wg_key)))
        self._retry_at = now + HELLO_RETRY_S
