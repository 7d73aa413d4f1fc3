"""The wireguard-go UAPI text protocol (pure codec).

A request is `set=1` or `get=1` followed by `key=value` lines and a blank line. The device
answers a set with `errno=N` and a blank line, and a get with the device's `key=value` lines,
then `errno=N` and a blank line. Keys are lowercase hex; a `public_key=` line starts a peer
section (https://www.wireguard.com/xplatform/).

`marshal_set` writes a `DeviceUpdate` with keepalive last: a first pass writes each peer's
endpoint and allowed IPs (and removals), a second pass sets keepalives with `update_only=true`,
because enabling keepalive may send a packet at once and it should find the final endpoint.

`parse_get_reply` reads untrusted bytes from a socket: it is bounded in size and either returns
a value or raises `UapiParseError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from meshctl.errors import ParseError, UsageError
from meshctl.keys import KEY_LEN, NodePrivate, NodePublic
from meshctl.wg.config import (
    DeviceState,
    DeviceUpdate,
    PeerState,
    Prefix,
    canonical_endpoint,
    parse_prefix,
)

# A peer's get section is about 300 bytes plus ~50 per allowed IP; 64 MiB covers >100k peers.
MAX_REPLY_BYTES: Final = 64 * 1024 * 1024
MAX_LINE_BYTES: Final = 4096  # the longest legal line is a 64-char key or an endpoint
MAX_U64: Final = 2**64 - 1
MAX_PORT: Final = 65535
MAX_KEEPALIVE: Final = 65535
REPLY_END: Final = b"\n\n"

GET_REQUEST: Final = b"get=1\n\n"
# The agent reads the same few thousand endpoints and prefixes every pass; ipaddress parsing
# dominates the cost of a get at 1,000 peers, so remember recent results (bounded).
PARSE_CACHE_ENTRIES: Final = 1 << 16


class UapiParseError(ParseError):
    """The device's reply is not valid UAPI text."""


@dataclass(frozen=True, slots=True)
class GetReply:
    errno: int  # 0 = ok; otherwise `state` holds whatever came before the error
    state: DeviceState


# --- encoding ----------------------------------------------------------------------------------


def _hex(raw: bytes) -> str:
    return raw.hex()


def marshal_set(update: DeviceUpdate) -> bytes:
    """The `set=1` request for `update` (private key in hex: never log these bytes)."""
    lines = ["set=1"]
    if update.private_key is not None:
        lines.append(f"private_key={_hex(update.private_key.private_bytes_for_device())}")
    if update.listen_port is not None:
        lines.append(f"listen_port={update.listen_port}")
    for p in update.peers:
        lines.append(f"public_key={_hex(p.public_key.raw)}")
        if p.remove:
            lines.append("remove=true")
            continue
        if p.update_only:
            lines.append("update_only=true")
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        if p.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines.extend(f"allowed_ip={ip}" for ip in p.allowed_ips)
    for p in update.peers:
        if not p.remove and p.persistent_keepalive is not None:
            lines.append(f"public_key={_hex(p.public_key.raw)}")
            lines.append("update_only=true")
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
    return ("\n".join(lines) + "\n\n").encode("ascii")


# --- decoding ----------------------------------------------------------------------------------


def reply_complete(buf: bytes) -> bool:
    """True once `buf` holds a whole reply (the shell reads until this holds)."""
    return buf.endswith(REPLY_END)  # no UAPI line is empty, so a blank line ends the reply


def _errno(value: bytes) -> int:
    """wireguard-go reports failures as negative errnos (`errno=-98` for a port in use)."""
    return _number(b"errno", value.removeprefix(b"-"), 2**31 - 1)


def _key(key: str, value: str) -> bytes:
    if len(value) != 2 * KEY_LEN:
        raise UapiParseError(f"UAPI: `{key}` is not a {KEY_LEN}-byte hex key")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != KEY_LEN:  # fromhex skips spaces: " " in the 64 characters is no key either
        raise UapiParseError(f"UAPI: `{key}` is not hex")
    return raw


@functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _endpoint(value: bytes) -> str:
    try:
        return canonical_endpoint(value.decode())
    except UsageError as exc:
        raise UapiParseError(f"UAPI: {exc.message}") from None


@functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _allowed_ip(value: bytes) -> Prefix:
    try:
        return parse_prefix(value.decode())
    except ValueError:
        raise UapiParseError(f"UAPI: bad allowed_ip `{value[:60].decode()}`") from None


def _number(key: bytes, value: bytes, maximum: int) -> int:
    if not value.isdigit() or len(value) > 20:  # bytes.isdigit: ASCII digits only
        raise UapiParseError(f"UAPI: `{key.decode()}` is not a number: `{value[:40].decode()}`")
    n = int(value)
    if n > maximum:
        raise UapiParseError(f"UAPI: `{key.decode()}` out of range: {n}")
    return n


def parse_get_reply(data: bytes) -> GetReply:
    """Parse a whole `get=1` reply (bytes up to and including the final blank line).

    At 10,000 peers a reply is 140,000 lines, read on every pass: one loop over the lines as
    bytes, the fields kept in locals and each peer built once at its end; only what a plan or
    `status` looks at is converted (keys, endpoint, allowed IPs, keepalive, handshake, counters).
    """
    if len(data) > MAX_REPLY_BYTES:
        raise UapiParseError(f"UAPI: reply larger than {MAX_REPLY_BYTES} bytes")
    if not data.endswith(REPLY_END):
        raise UapiParseError("UAPI: reply does not end with a blank line")
    if not data.isascii():
        raise UapiParseError("UAPI: reply is not ASCII")
    lines = data[: -len(REPLY_END)].split(b"\n")
    if max(map(len, lines)) > MAX_LINE_BYTES:
        raise UapiParseError("UAPI: line too long")
    private_key: NodePrivate | None = None
    listen_port = 0
    peers: list[PeerState] = []
    seen: set[bytes] = set()
    errno: int | None = None
    # The peer being read (raw key None: still in the device section).
    raw: bytes | None = None
    endpoint: str | None = None
    ips: list[Prefix] = []
    keepalive = handshake = rx = tx = 0

    def peer() -> PeerState:
        assert raw is not None
        return PeerState(NodePublic(raw), endpoint, tuple(ips), keepalive, handshake or None, rx, tx)

    for line in lines:
        if errno is not None:
            raise UapiParseError("UAPI: data after errno")
        key, sep, value = line.partition(b"=")
        if not sep:
            raise UapiParseError(f"UAPI: line without `=`: `{line[:40].decode()}`")
        if key == b"public_key":
            if raw is not None:
                peers.append(peer())
            raw = _key("public_key", value.decode())
            if raw in seen:
                raise UapiParseError("UAPI: peer listed twice")
            seen.add(raw)
            endpoint, ips, keepalive, handshake, rx, tx = None, [], 0, 0, 0, 0
        elif raw is not None:
            if key == b"allowed_ip":
                ips.append(_allowed_ip(value))
            elif key == b"endpoint":
                endpoint = _endpoint(value)
            elif key == b"last_handshake_time_sec":
                handshake = _number(key, value, MAX_U64)
            elif key == b"tx_bytes":
                tx = _number(key, value, MAX_U64)
            elif key == b"rx_bytes":
                rx = _number(key, value, MAX_U64)
            elif key == b"persistent_keepalive_interval":
                keepalive = _number(key, value, MAX_KEEPALIVE)
            elif key == b"errno":
                errno = _errno(value)
            # preshared_key, protocol_version, last_handshake_time_nsec and unknown keys: ignored.
        elif key == b"errno":
            errno = _errno(value)
        elif key == b"private_key":
            private_key = NodePrivate(_key("private_key", value.decode()))
        elif key == b"listen_port":
            listen_port = _number(key, value, MAX_PORT)
        # fwmark and unknown device keys: ignored.
    if errno is None:
        raise UapiParseError("UAPI: reply has no errno line")
    if raw is not None:
        peers.append(peer())
    state = DeviceState(private_key=private_key, listen_port=listen_port, peers=tuple(peers))
    return GetReply(errno=errno, state=state)


def parse_set_reply(data: bytes) -> int:
    """The errno of a `set=1` reply (0 = applied)."""
    if len(data) > MAX_LINE_BYTES or not data.endswith(REPLY_END):
        raise UapiParseError("UAPI: malformed set reply")
    if not data.isascii():
        raise UapiParseError("UAPI: reply is not ASCII")
    line = data[: -len(REPLY_END)]
    key, sep, value = line.partition(b"=")
    if key != b"errno" or not sep:
        raise UapiParseError(f"UAPI: expected errno, got `{line[:40].decode()}`")
    return _errno(value)
