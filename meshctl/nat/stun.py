"""STUN binding requests and responses (RFC 8489, compatible with RFC 5389 servers) (pure).

Only what NAT traversal needs: a client builds a Binding request and reads the
mapped address out of the success response; a server (the relay, later) reads a
Binding request and answers it. No authentication (MESSAGE-INTEGRITY is carried
but not checked: STUN here only tells us our public address, which disco then
confirms end to end).

Message layout (RFC 8489 section 5)::

    0                   1                   2                   3
    |0 0|  message type (14 bits)    |       message length         |
    |                 magic cookie 0x2112A442                        |
    |                 transaction id (96 bits)                       |
    attributes: type (16) | length (16) | value, padded to 4 bytes

Every parser takes one whole UDP payload and either returns a value or raises
one of the StunError subclasses below, in time linear in the input size.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from collections.abc import Callable
from typing import Final

from meshctl.errors import ParseError
from meshctl.nat.addr import AddrPort

MAGIC_COOKIE: Final = 0x2112A442
_COOKIE_BYTES: Final = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LEN: Final = 20
TXID_LEN: Final = 12
# A STUN-over-UDP message must fit a datagram; anything larger is hostile or broken.
MAX_MESSAGE_LEN: Final = 2048
# Bound the attribute walk independently of the byte budget (2048 / 4 would allow 512).
MAX_ATTRIBUTES: Final = 64

BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
BINDING_ERROR: Final = 0x0111

ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
# Pre-RFC 5389 servers used this comprehension-optional code for XOR-MAPPED-ADDRESS.
ATTR_XOR_MAPPED_ADDRESS_OLD: Final = 0x8020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
FINGERPRINT_XOR: Final = 0x5354554E
_FINGERPRINT_ATTR_LEN: Final = 8

_FAMILY_IPV4: Final = 0x01
_FAMILY_IPV6: Final = 0x02

TxID = bytes  # always TXID_LEN bytes


class StunError(ParseError):
    """A packet is not a usable STUN message; the shell counts it and drops it."""


class NotStunError(StunError):
    """No STUN header: wrong leading bits, no magic cookie, or too short."""


class MalformedMessageError(StunError):
    """The header's length disagrees with the datagram, or the message is too big."""


class UnexpectedMessageError(StunError):
    """A valid STUN message of another type (error response, indication, ...)."""


class MalformedAttributeError(StunError):
    """An attribute runs past the end, is the wrong size, or appears after FINGERPRINT."""


class BadFingerprintError(StunError):
    """The FINGERPRINT attribute does not match the message's CRC-32."""


class NoMappedAddressError(StunError):
    """A success response without XOR-MAPPED-ADDRESS or MAPPED-ADDRESS."""


def new_txid(randbytes: Callable[[int], bytes]) -> TxID:
    """A fresh transaction id from the injected randomness source (e.g. os.urandom)."""
    txid = randbytes(TXID_LEN)
    if len(txid) != TXID_LEN:
        raise ValueError("randomness source returned the wrong length")
    return bytes(txid)


def is_stun(data: bytes) -> bool:
    """Cheap demux test: could this datagram be STUN (leading zero bits + magic cookie)?"""
    return len(data) >= HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == _COOKIE_BYTES


# --- encoding ------------------------------------------------------------------------------


def _attr(attr_type: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * pad


def _message(msg_type: int, txid: TxID, attrs: bytes, fingerprint: bool) -> bytes:
    if len(txid) != TXID_LEN:
        raise ValueError(f"transaction id must be {TXID_LEN} bytes")
    length = len(attrs) + (_FINGERPRINT_ATTR_LEN if fingerprint else 0)
    msg = struct.pack("!HHI", msg_type, length, MAGIC_COOKIE) + txid + attrs
    if fingerprint:
        crc = (zlib.crc32(msg) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        msg += _attr(ATTR_FINGERPRINT, crc.to_bytes(4, "big"))
    return msg


def marshal_binding_request(
    txid: TxID, fingerprint: bool = True, software: str | None = None
) -> bytes:
    """A Binding request; FINGERPRINT lets the receiver tell STUN from other traffic."""
    attrs = _attr(ATTR_SOFTWARE, software.encode()) if software else b""
    return _message(BINDING_REQUEST, txid, attrs, fingerprint)


def _xor_address(addr: AddrPort, txid: TxID) -> bytes:
    port = addr.port ^ (MAGIC_COOKIE >> 16)
    if addr.ip.version == 4:
        raw = int(addr.ip) ^ MAGIC_COOKIE
        return struct.pack("!BBHI", 0, _FAMILY_IPV4, port, raw)
    mask = int.from_bytes(_COOKIE_BYTES + txid, "big")
    return struct.pack("!BBH", 0, _FAMILY_IPV6, port) + (int(addr.ip) ^ mask).to_bytes(16, "big")


def marshal_binding_response(
    txid: TxID, mapped: AddrPort, fingerprint: bool = True, software: str | None = None
) -> bytes:
    """A Binding success response carrying `mapped` as XOR-MAPPED-ADDRESS."""
    attrs = _attr(ATTR_SOFTWARE, software.encode()) if software else b""
    attrs += _attr(ATTR_XOR_MAPPED_ADDRESS, _xor_address(mapped, txid))
    return _message(BINDING_SUCCESS, txid, attrs, fingerprint)


# --- decoding ------------------------------------------------------------------------------


def _header(data: bytes) -> tuple[int, TxID]:
    """Check the header and the length field; return (message type, txid)."""
    if not is_stun(data):
        raise NotStunError("not a STUN message")
    if len(data) > MAX_MESSAGE_LEN:
        raise MalformedMessageError(f"STUN message longer than {MAX_MESSAGE_LEN} bytes")
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if length % 4 or HEADER_LEN + length != len(data):
        raise MalformedMessageError(
            f"STUN length field {length} does not match the {len(data)}-byte datagram"
        )
    return msg_type, bytes(data[8:HEADER_LEN])


def _attributes(data: bytes) -> list[tuple[int, bytes]]:
    """Walk the attributes, verifying FINGERPRINT (which must be last) when present."""
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER_LEN
    while pos < len(data):
        if len(attrs) >= MAX_ATTRIBUTES:
            raise MalformedAttributeError(f"more than {MAX_ATTRIBUTES} STUN attributes")
        if pos + 4 > len(data):
            raise MalformedAttributeError("truncated STUN attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            raise MalformedAttributeError(f"STUN attribute 0x{attr_type:04x} runs past the end")
        value = bytes(data[pos + 4 : end])
        if attr_type == ATTR_FINGERPRINT:
            if attr_len != 4 or end != len(data):
                raise MalformedAttributeError("FINGERPRINT must be the last attribute, 4 bytes")
            want = (zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if int.from_bytes(value, "big") != want:
                raise BadFingerprintError("STUN FINGERPRINT mismatch")
        attrs.append((attr_type, value))
        pos = end + (-attr_len % 4)
    if pos != len(data):
        raise MalformedAttributeError("STUN attribute padding runs past the end")
    return attrs


def _address(value: bytes, txid: TxID, xored: bool) -> AddrPort:
    if len(value) < 4:
        raise MalformedAttributeError("address attribute too short")
    family, port = value[1], int.from_bytes(value[2:4], "big")
    if xored:
        port ^= MAGIC_COOKIE >> 16
    raw = value[4:]
    if family == _FAMILY_IPV4 and len(raw) == 4:
        num = int.from_bytes(raw, "big") ^ (MAGIC_COOKIE if xored else 0)
        return AddrPort(ipaddress.IPv4Address(num), port)
    if family == _FAMILY_IPV6 and len(raw) == 16:
        mask = int.from_bytes(_COOKIE_BYTES + txid, "big") if xored else 0
        return AddrPort(ipaddress.IPv6Address(int.from_bytes(raw, "big") ^ mask), port)
    raise MalformedAttributeError(f"bad address family {family} or length {len(value)}")


def parse_binding_response(data: bytes) -> tuple[TxID, AddrPort]:
    """Parse a Binding success response: (txid, our address as the server saw it).

    XOR-MAPPED-ADDRESS is preferred; MAPPED-ADDRESS is the fallback for RFC 3489
    servers. The caller matches the txid against its outstanding requests.
    """
    msg_type, txid = _header(data)
    if msg_type != BINDING_SUCCESS:
        raise UnexpectedMessageError(f"STUN message type 0x{msg_type:04x} is not a binding success")
    fallback: AddrPort | None = None
    for attr_type, value in _attributes(data):
        if attr_type in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD):
            return txid, _address(value, txid, xored=True)
        if attr_type == ATTR_MAPPED_ADDRESS and fallback is None:
            fallback = _address(value, txid, xored=False)
    if fallback is None:
        raise NoMappedAddressError("STUN binding response has no mapped address")
    return txid, fallback


def parse_binding_request(data: bytes) -> TxID:
    """Parse a Binding request (for a server answering STUN): its txid."""
    msg_type, txid = _header(data)
    if msg_type != BINDING_REQUEST:
        raise UnexpectedMessageError(f"STUN message type 0x{msg_type:04x} is not a binding request")
    _attributes(data)  # validates layout and FINGERPRINT
    return txid
