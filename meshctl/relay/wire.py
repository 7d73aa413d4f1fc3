"""The meshctl relay protocol's wire format: frames, their codec and the login messages (pure).

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

The two sides' state machines use this module: server_core.RelayCore (the relay) and
client_core.ClientSession (a member). Pure: no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias, assert_never

from meshctl.errors import ParseError
from meshctl.keys import KEY_LEN, SIG_LEN, NodePublic, VerifyKey
from meshctl.relay.channels import BIND_TOKEN_LEN, ChannelState

# --- wire constants --------------------------------------------------------------------------

MAGIC: Final = b"mcRL"
VERSION: Final = 1
HEADER_LEN: Final = 8  # magic 4, version 1, type 1, length 2
HEADER: Final = struct.Struct("!4sBBH")
# A frame must fit one UDP datagram: 65535 - 8 (UDP header) - 20 (IPv4 header).
MAX_FRAME_LEN: Final = 65_507
MAX_BODY_LEN: Final = MAX_FRAME_LEN - HEADER_LEN
TOKEN_LEN: Final = 8  # 64 random bits: an off-path guess succeeds once in 2**64 tries
NONCE_LEN: Final = 32  # 8 bytes time (ms) + 24 bytes truncated HMAC-SHA256
NONCE_TIME_LEN: Final = 8
PING_DATA_LEN: Final = 8
# A DNS label, like every other name in the coordination repository.
MAX_RELAY_NAME_LEN: Final = 63
# SendPacket carries token + key in front of the payload; the rest of a datagram is payload.
MAX_PAYLOAD_LEN: Final = MAX_BODY_LEN - TOKEN_LEN - KEY_LEN
# A TCP reader holds at most one partial frame plus one read; nothing grows without bound.
MAX_STREAM_BUFFER: Final = 2 * MAX_FRAME_LEN
# What a relay asks for in Welcome (and a client assumes until then): below the 25 s NAT
# keepalive, and a restarted relay is noticed within it.
PING_INTERVAL_S: Final = 2.0

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
    return HEADER.pack(MAGIC, VERSION, ftype, len(body)) + body


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
    magic, version, ftype, length = HEADER.unpack_from(data)
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


# Offsets of the data frames, for the hot paths that forward them without a full parse.
SEND_PREFIX: Final = MAGIC + bytes([VERSION, FrameType.SEND_PACKET])
RECV_PREFIX: Final = MAGIC + bytes([VERSION, FrameType.RECV_PACKET])
TOKEN_END: Final = HEADER_LEN + TOKEN_LEN
KEY_END: Final = TOKEN_END + KEY_LEN
RECV_MIN_LEN: Final = HEADER_LEN + KEY_LEN
