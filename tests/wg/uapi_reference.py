"""The UAPI get-reply parser as it was before the bytes-level one (meshctl/wg/uapi.py), kept for
tests only: a property test holds the two to the same results on the same bytes."""

from __future__ import annotations

import functools

from meshctl.errors import UsageError
from meshctl.keys import NodePrivate, NodePublic
from meshctl.wg.config import DeviceState, PeerState, Prefix, canonical_endpoint, parse_prefix
from meshctl.wg.uapi import (
    MAX_KEEPALIVE,
    MAX_LINE_BYTES,
    MAX_PORT,
    MAX_REPLY_BYTES,
    MAX_U64,
    PARSE_CACHE_ENTRIES,
    REPLY_END,
    GetReply,
    UapiParseError,
    _key,
)


def _uint(key: str, value: str, maximum: int) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise UapiParseError(f"UAPI: `{key}` is not a number: `{value[:40]}`")
    n = int(value)
    if n > maximum:
        raise UapiParseError(f"UAPI: `{key}` out of range: {n}")
    return n


def _errno(value: str) -> int:
    return _uint("errno", value.removeprefix("-"), 2**31 - 1)


class _PeerBuilder:
    __slots__ = ("key", "endpoint", "ips", "keepalive", "hs_sec", "rx", "tx")

    def __init__(self, key: NodePublic) -> None:
        self.key = key
        self.endpoint: str | None = None
        self.ips: list[Prefix] = []
        self.keepalive = 0
        self.hs_sec = 0
        self.rx = 0
        self.tx = 0

    def build(self) -> PeerState:
        return PeerState(
            public_key=self.key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.ips),
            persistent_keepalive=self.keepalive,
            last_handshake=self.hs_sec or None,
            rx_bytes=self.rx,
            tx_bytes=self.tx,
        )


@functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _endpoint(value: str) -> str:
    try:
        return canonical_endpoint(value)
    except UsageError as exc:
        raise UapiParseError(f"UAPI: {exc.message}") from None


@functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _allowed_ip(value: str) -> Prefix:
    try:
        return parse_prefix(value)
    except ValueError:
        raise UapiParseError(f"UAPI: bad allowed_ip `{value[:60]}`") from None


def _peer_line(peer: _PeerBuilder, key: str, value: str) -> None:
    if key == "endpoint":
        peer.endpoint = _endpoint(value)
    elif key == "allowed_ip":
        peer.ips.append(_allowed_ip(value))
    elif key == "persistent_keepalive_interval":
        peer.keepalive = _uint(key, value, MAX_KEEPALIVE)
    elif key == "last_handshake_time_sec":
        peer.hs_sec = _uint(key, value, MAX_U64)
    elif key == "rx_bytes":
        peer.rx = _uint(key, value, MAX_U64)
    elif key == "tx_bytes":
        peer.tx = _uint(key, value, MAX_U64)
    # preshared_key, protocol_version, last_handshake_time_nsec and unknown keys: ignored.


def reference_parse_get_reply(data: bytes) -> GetReply:
    """Parse a whole `get=1` reply (bytes up to and including the final blank line)."""
    if len(data) > MAX_REPLY_BYTES:
        raise UapiParseError(f"UAPI: reply larger than {MAX_REPLY_BYTES} bytes")
    if not data.endswith(REPLY_END):
        raise UapiParseError("UAPI: reply does not end with a blank line")
    try:
        text = data[: -len(REPLY_END)].decode("ascii")
    except UnicodeDecodeError:
        raise UapiParseError("UAPI: reply is not ASCII") from None
    private_key: NodePrivate | None = None
    listen_port = 0
    peers: list[_PeerBuilder] = []
    seen: set[bytes] = set()
    errno: int | None = None
    for line in text.split("\n"):
        if len(line) > MAX_LINE_BYTES:
            raise UapiParseError("UAPI: line too long")
        if errno is not None:
            raise UapiParseError("UAPI: data after errno")
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiParseError(f"UAPI: line without `=`: `{line[:40]}`")
        if key == "errno":
            errno = _errno(value)
        elif key == "public_key":
            raw = _key(key, value)
            if raw in seen:
                raise UapiParseError("UAPI: peer listed twice")
            seen.add(raw)
            peers.append(_PeerBuilder(NodePublic(raw)))
        elif peers:
            _peer_line(peers[-1], key, value)
        elif key == "private_key":
            private_key = NodePrivate(_key(key, value))
        elif key == "listen_port":
            listen_port = _uint(key, value, MAX_PORT)
        # fwmark and unknown device keys: ignored.
    if errno is None:
        raise UapiParseError("UAPI: reply has no errno line")
    state = DeviceState(
        private_key=private_key, listen_port=listen_port, peers=tuple(p.build() for p in peers)
    )
    return GetReply(errno=errno, state=state)
