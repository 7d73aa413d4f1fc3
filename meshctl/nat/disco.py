"""Disco: the path-discovery messages (ping, pong, call-me-maybe), sealed end to end (pure).

Wire format of one disco packet (a whole UDP payload, or a relay frame body)::

    magic      6 bytes   b"MC\\xf0\\x9f\\x94\\x8d" ("MC" + U+1F50D in UTF-8)
    sender    32 bytes   the sender's disco public key (X25519), from its signed peer record
    nonce     12 bytes   random, from the injected randomness source
    box        n bytes   ChaCha20-Poly1305(key, nonce, inner, aad=magic || sender)  (n >= 16)

The magic cannot be mistaken for the other traffic on the WireGuard port: a STUN
message starts with two zero bits (first byte < 0x40) and WireGuard messages start
with a type byte 1..4 followed by three zero bytes; b"M" is 0x4D.

Key: HKDF-SHA256(ikm = X25519(our private, their public), salt = empty,
info = b"meshctl disco v1" || sender public || recipient public), 32 bytes. Each
direction has its own key (the info is ordered), so the random 96-bit nonces of the
two directions never share a key; at disco's rate (a few packets per 25 s per peer)
random nonces stay far below the birthday bound.

Inner (plaintext) message::

    type 1 byte | version 1 byte | payload
    PING          0x01: txid 12 | sender's WireGuard public key 32
    PONG          0x02: txid 12 | src address 16 (IPv6, IPv4-mapped for v4) | src port 2
    CALL_ME_MAYBE 0x03: N x (address 16 | port 2), 0 <= N <= MAX_ENDPOINTS

Like Tailscale's disco, parsing is lax about extra trailing bytes in PING and PONG
(a newer version may append fields) but strict about call-me-maybe's 18-byte records.

Replays: `open` does not keep replay state. A replayed ping earns one more pong (the
same as a duplicate on the wire); a replayed pong carries a txid the path manager no
longer waits for and is ignored; a replayed call-me-maybe only re-triggers probing of
addresses the peer really sent. None of these can move a path: only a fresh pong to
our own fresh ping can.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshctl.errors import ParseError
from meshctl.keys import KEY_LEN, DiscoPrivate, DiscoPublic, NodePublic
from meshctl.nat.addr import AddrPort

MAGIC: Final = b"MC\xf0\x9f\x94\x8d"
NONCE_LEN: Final = 12
TAG_LEN: Final = 16
HEADER_LEN: Final = len(MAGIC) + KEY_LEN + NONCE_LEN
TXID_LEN: Final = 12
# Small enough to never fragment on any path (IPv6 minimum MTU 1280 minus headers).
MAX_PACKET_LEN: Final = 1200
# 32 candidates is more than any real host has; it also bounds CALL_ME_MAYBE's size.
MAX_ENDPOINTS: Final = 32
# Derived keys cached per peer; cleared when full (only allowed peers ever get in).
MAX_CACHED_KEYS: Final = 4096

VERSION: Final = 0
TYPE_PING: Final = 0x01
TYPE_PONG: Final = 0x02
TYPE_CALL_ME_MAYBE: Final = 0x03
_ENDPOINT_LEN: Final = 18
_KDF_INFO: Final = b"meshctl disco v1"


class DiscoError(ParseError):
    """A disco packet was dropped; the subclass says why (the shell counts and drops)."""


class NotDiscoError(DiscoError):
    """No disco magic, or shorter than a header and a tag."""


class TooLargeError(DiscoError):
    """Longer than MAX_PACKET_LEN."""


class UnknownSenderError(DiscoError):
    """The sender's disco key is not in the verified network map."""


class DecryptError(DiscoError):
    """The box did not open: wrong key, tampered, or not for us."""


class MalformedMessageError(DiscoError):
    """The inner message is too short, has a bad field, or an unknown type."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Probe a candidate path; the receiver answers with a Pong to the source address."""

    txid: bytes
    node_key: NodePublic  # the sender's WireGuard key: names the peer without a lookup

    def __post_init__(self) -> None:
        if len(self.txid) != TXID_LEN:
            raise ValueError(f"txid must be {TXID_LEN} bytes")


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a Ping; `src` is where the ping came from as the answerer saw it."""

    txid: bytes
    src: AddrPort

    def __post_init__(self) -> None:
        if len(self.txid) != TXID_LEN:
            raise ValueError(f"txid must be {TXID_LEN} bytes")


@dataclass(frozen=True, slots=True)
class CallMeMaybe:
    """Our current candidate endpoints: please ping all of them now."""

    endpoints: tuple[AddrPort, ...]

    def __post_init__(self) -> None:
        if len(self.endpoints) > MAX_ENDPOINTS:
            raise ValueError(f"at most {MAX_ENDPOINTS} endpoints")


DiscoMessage: TypeAlias = Ping | Pong | CallMeMaybe


def looks_like_disco(data: bytes) -> bool:
    """Cheap demux test on the first bytes."""
    return data[: len(MAGIC)] == MAGIC


# --- inner messages ------------------------------------------------------------------------


_V4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


def _pack_endpoint(addr: AddrPort) -> bytes:
    ip = addr.ip
    packed = _V4_MAPPED_PREFIX + ip.packed if ip.version == 4 else ip.packed
    return packed + addr.port.to_bytes(2, "big")


def _unpack_endpoint(raw: bytes) -> AddrPort:
    v6 = ipaddress.IPv6Address(raw[:16])
    port = int.from_bytes(raw[16:18], "big")
    mapped = v6.ipv4_mapped
    return AddrPort(mapped if mapped is not None else v6, port)


def marshal_message(msg: DiscoMessage) -> bytes:
    """The plaintext inner message (sealed by DiscoBox.seal)."""
    match msg:
        case Ping(txid, node_key):
            return bytes([TYPE_PING, VERSION]) + txid + node_key.raw
        case Pong(txid, src):
            return bytes([TYPE_PONG, VERSION]) + txid + _pack_endpoint(src)
        case CallMeMaybe(endpoints):
            return bytes([TYPE_CALL_ME_MAYBE, VERSION]) + b"".join(map(_pack_endpoint, endpoints))
    raise TypeError(f"not a disco message: {type(msg).__name__}")


def parse_message(data: bytes) -> DiscoMessage:
    """Parse an inner message; raises MalformedMessageError on anything unusable."""
    if len(data) < 2:
        raise MalformedMessageError("disco message shorter than its type and version")
    msg_type, payload = data[0], data[2:]
    if msg_type == TYPE_PING:
        if len(payload) < TXID_LEN + KEY_LEN:
            raise MalformedMessageError("disco ping too short")
        return Ping(bytes(payload[:TXID_LEN]), NodePublic(bytes(payload[TXID_LEN : TXID_LEN + KEY_LEN])))
    if msg_type == TYPE_PONG:
        if len(payload) < TXID_LEN + _ENDPOINT_LEN:
            raise MalformedMessageError("disco pong too short")
        return Pong(bytes(payload[:TXID_LEN]), _unpack_endpoint(payload[TXID_LEN:]))
    if msg_type == TYPE_CALL_ME_MAYBE:
        if len(payload) % _ENDPOINT_LEN:
            raise MalformedMessageError("disco call-me-maybe has a partial endpoint")
        count = len(payload) // _ENDPOINT_LEN
        if count > MAX_ENDPOINTS:
            raise MalformedMessageError(f"disco call-me-maybe has more than {MAX_ENDPOINTS} endpoints")
        return CallMeMaybe(tuple(
            _unpack_endpoint(payload[i * _ENDPOINT_LEN : (i + 1) * _ENDPOINT_LEN]) for i in range(count)
        ))
    raise MalformedMessageError(f"unknown disco message type 0x{msg_type:02x}")


def summary(msg: DiscoMessage) -> str:
    """A one-line description for logs (no secrets in disco messages, but keep it short)."""
    match msg:
        case Ping(txid, node_key):
            return f"ping tx={txid[:3].hex()} {node_key.short()}"
        case Pong(txid, src):
            return f"pong tx={txid[:3].hex()} src={src}"
        case CallMeMaybe(endpoints):
            return f"call-me-maybe {' '.join(map(str, endpoints)) or '(none)'}"
    raise TypeError(f"not a disco message: {type(msg).__name__}")


# --- sealing -------------------------------------------------------------------------------


class DiscoBox:
    """Seals and opens disco packets with our disco private key.

    Pure: randomness (nonces) is injected; derived keys are cached per peer.
    """

    def __init__(self, private: DiscoPrivate, randbytes: Callable[[int], bytes]) -> None:
        self._private = private
        self.public = private.public()
        self._randbytes = randbytes
        self._keys: dict[tuple[DiscoPublic, bool], ChaCha20Poly1305] = {}

    def __repr__(self) -> str:
        return f"DiscoBox({self.public.short()})"

    def _aead(self, peer: DiscoPublic, sending: bool) -> ChaCha20Poly1305:
        cached = self._keys.get((peer, sending))
        if cached is not None:
            return cached
        try:
            shared = self._private.shared_secret(peer)
        except ValueError:  # low-order point: the exchange yields zero
            raise DecryptError("disco key agreement failed") from None
        sender, recipient = (self.public, peer) if sending else (peer, self.public)
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None,
            info=_KDF_INFO + sender.raw + recipient.raw,
        ).derive(shared)
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        aead = ChaCha20Poly1305(key)
        self._keys[(peer, sending)] = aead
        return aead

    def seal(self, msg: DiscoMessage, recipient: DiscoPublic) -> bytes:
        """A whole disco packet for `recipient`."""
        nonce = self._randbytes(NONCE_LEN)
        if len(nonce) != NONCE_LEN:
            raise ValueError("randomness source returned the wrong length")
        head = MAGIC + self.public.raw
        box = self._aead(recipient, sending=True).encrypt(nonce, marshal_message(msg), head)
        packet = head + nonce + box
        if len(packet) > MAX_PACKET_LEN:
            raise ValueError("disco message too large")
        return packet

    def open(self, packet: bytes, allowed: Container[DiscoPublic]) -> tuple[DiscoPublic, DiscoMessage]:
        """Open a packet from a sender in `allowed`: (sender's disco key, message).

        Raises a DiscoError subclass for anything to drop, including senders that are
        not in the verified map (checked before any cryptography runs).
        """
        if not looks_like_disco(packet) or len(packet) < HEADER_LEN + TAG_LEN:
            raise NotDiscoError("not a disco packet")
        if len(packet) > MAX_PACKET_LEN:
            raise TooLargeError(f"disco packet longer than {MAX_PACKET_LEN} bytes")
        sender = DiscoPublic(bytes(packet[len(MAGIC) : len(MAGIC) + KEY_LEN]))
        if sender not in allowed or sender == self.public:
            raise UnknownSenderError(f"disco packet from unknown key {sender.short()}")
        nonce = bytes(packet[len(MAGIC) + KEY_LEN : HEADER_LEN])
        try:
            inner = self._aead(sender, sending=False).decrypt(
                nonce, bytes(packet[HEADER_LEN:]), bytes(packet[: len(MAGIC) + KEY_LEN])
            )
        except InvalidTag:
            raise DecryptError(f"disco packet from {sender.short()} did not open") from None
        return sender, parse_message(inner)
