"""WireGuard device config: desired config, read-back state and the patch between them (pure).

`plan_update(state, config)` works like wireguard-tools' `syncconf`: it reads nothing itself, it
compares the state read back from the device with the desired config and returns a
`DeviceUpdate` that writes only what differs:

- a peer is written only when it is new or its endpoint, allowed IPs or keepalive changed;
- a peer that vanished from the config is removed (`remove=true`);
- allowed IPs are replaced only when the set changed;
- keepalive is written last by every encoder (it can send a packet at once, which should go to
  the final endpoint with the final allowed IPs in place);
- nothing else is touched, so updating one peer never resets another peer's handshake;
- when nothing differs the update is empty and the caller makes no WireGuard call at all.

The private key is compared in constant time and never printed: `describe()` shows the public key.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from meshctl.errors import UsageError
from meshctl.keys import NodePrivate, NodePublic

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_PORT: Final = 65535
MAX_KEEPALIVE_S: Final = 65535  # a u16 in both the netlink and the UAPI protocol
ANY_PORT: Final = 0  # listen_port 0: let WireGuard pick one and keep whatever it picked
HANDSHAKE_FRESH_S: Final = 180  # WireGuard re-handshakes every 120 s while a tunnel is in use


# --- endpoints -------------------------------------------------------------------------------


def parse_endpoint(text: str) -> tuple[IPAddress, int]:
    """Parse `1.2.3.4:51820` or `[fd00::1]:51820` (an IP literal; resolve names before)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UsageError(f"Unable to parse endpoint: `{text}` (expected IP:PORT or [IPv6]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"Unable to parse endpoint: `{text}` (put an IPv6 address in brackets)")
    try:
        addr = ip_address(host)
    except ValueError:
        raise UsageError(f"Unable to parse endpoint: `{text}` (not an IP address)") from None
    port = int(port_text)
    if not 0 < port <= MAX_PORT:
        raise UsageError(f"Unable to parse endpoint: `{text}` (port out of range)")
    return addr, port


def format_endpoint(addr: IPAddress, port: int) -> str:
    """The canonical text form, the one `wg` and wireguard-go print."""
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


@functools.lru_cache(maxsize=1 << 14)
def canonical_endpoint(text: str) -> str:
    # Cached: a pass builds one PeerConfig per peer, mostly with the endpoints of the last pass.
    host, _, port = text.rpartition(":")
    if port.isascii() and port.isdigit() and port[0] != "0" and int(port) <= MAX_PORT and _v4_int(host) is not None:
        return text  # a plain dotted quad and port, as WireGuard prints them: canonical already
    return format_endpoint(*parse_endpoint(text))


def _v4_int(text: str) -> int | None:
    """The plain dotted quad as an integer; None for anything else (ipaddress then decides)."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (part.isascii() and part.isdigit() and len(part) <= 3) or (part[0] == "0" and len(part) > 1):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


_V6_DIGITS: Final = "{:0>4}" * 8


def _v6_int(text: str) -> int | None:
    """Eight hex groups, or fewer with one `::`, as an integer; None for anything else
    (embedded IPv4, a scope, bad text: ipaddress then decides)."""
    head, double, tail = text.partition("::")
    groups = head.split(":") if head else []
    rest = tail.split(":") if tail else []
    missing = 8 - len(groups) - len(rest)
    if (missing < 1) if double else (missing != 0 or not groups):
        return None
    groups += ["0"] * missing + rest
    lengths = list(map(len, groups))
    if min(lengths) == 0 or max(lengths) > 4:
        return None
    digits = _V6_DIGITS.format(*groups)  # each group padded to four digits with zeros
    if not (digits.isascii() and digits.isalnum()):
        return None
    try:
        return int.from_bytes(bytes.fromhex(digits), "big")
    except ValueError:  # a letter that is no hex digit
        return None


def ip_address(text: str) -> IPAddress:
    """ipaddress.ip_address, with a fast path for the plain forms (see parse_prefix)."""
    if ":" in text:
        v6 = _v6_int(text)
        if v6 is not None:
            return ipaddress.IPv6Address(v6)
    else:
        v4 = _v4_int(text)
        if v4 is not None:
            return ipaddress.IPv4Address(v4)
    return ipaddress.ip_address(text)  # scoped addresses; raises ValueError for the bad ones


def parse_prefix(text: str) -> Prefix:
    """ipaddress.ip_network(text, strict=False), three times faster for the forms WireGuard prints.

    WireGuard reports every allowed IP as text, 20,000 of them at 10,000 peers. The plain form
    `ADDR/LEN` is read here, no more leniently than ipaddress does (no leading zeros, no scope),
    and the network built from integers; anything else goes to ipaddress, so both accept and
    return the same (a property test holds them to it). ValueError for a bad prefix.
    """
    addr, sep, length = text.partition("/")
    v6 = ":" in addr
    if sep and length.isascii() and length.isdigit() and len(length) <= 3 and int(length) <= (128 if v6 else 32):
        value = _v6_int(addr) if v6 else _v4_int(addr)
        if value is not None:
            bits = int(length)
            host = (128 if v6 else 32) - bits
            return network(6 if v6 else 4, value >> host << host, bits)
    return ipaddress.ip_network(text, strict=False)


@functools.lru_cache(maxsize=1 << 16)
def network(version: int, value: int, length: int) -> Prefix:
    """The network `value/length` (host bits zero), one object per network while it stays cached.

    Built once per pass for what the desired config and the read-back state have in common,
    which then compare by identity (an ipaddress comparison is a Python call, 20,000 of them
    per plan at 10,000 peers)."""
    if version == 4:
        return ipaddress.IPv4Network((value, length))
    return ipaddress.IPv6Network((value, length))


def _prefix_key(p: Prefix) -> tuple[int, int, int]:
    return p.version, int(p.network_address), p.prefixlen  # ints: compared in C, not by ipaddress


def _sorted_prefixes(prefixes: tuple[Prefix, ...] | frozenset[Prefix]) -> tuple[Prefix, ...]:
    """Sorted, each once: the canonical form, so equal sets are equal tuples (plan_update
    compares tuples; ipaddress objects hash and compare slowly at 10,000 peers)."""
    if len(prefixes) < 2:
        return tuple(prefixes)
    if len(prefixes) == 2:
        a, b = prefixes
        if a.version != b.version:  # the usual pair: no need to look at the addresses
            return (a, b) if a.version < b.version else (b, a)
    keyed = sorted((_prefix_key(p), p) for p in prefixes) if len(prefixes) > 2 else None
    if keyed is None:  # two of one version
        a, b = prefixes
        ka, kb = _prefix_key(a), _prefix_key(b)
        return (a, b) if ka < kb else (b, a) if kb < ka else (a,)
    out = [keyed[0]]
    out += [item for prev, item in zip(keyed, keyed[1:], strict=False) if item[0] != prev[0]]
    return tuple(p for _, p in out)


def _raw_key(peer: PeerConfig | PeerState) -> bytes:
    return peer.public_key.raw


# --- desired config --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One desired peer. `endpoint=None` leaves whatever endpoint WireGuard learned (roaming)."""

    public_key: NodePublic
    allowed_ips: tuple[Prefix, ...]
    endpoint: str | None = None
    persistent_keepalive: int = 0  # seconds, 0 = off

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", canonical_endpoint(self.endpoint))
        if not 0 <= self.persistent_keepalive <= MAX_KEEPALIVE_S:
            raise UsageError(f"persistent keepalive out of range: {self.persistent_keepalive}")
        object.__setattr__(self, "allowed_ips", _sorted_prefixes(self.allowed_ips))


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """The desired device. `listen_port=0` means any port (and keep the one in use)."""

    private_key: NodePrivate
    listen_port: int
    peers: tuple[PeerConfig, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port <= MAX_PORT:
            raise UsageError(f"listen port out of range: {self.listen_port}")
        # Sorted by key so plans and encodings are deterministic.
        peers = sorted(self.peers, key=_raw_key)
        for a, b in zip(peers, peers[1:], strict=False):
            if a.public_key.raw == b.public_key.raw:
                raise UsageError(f"peer {a.public_key.short()} listed twice")
        object.__setattr__(self, "peers", tuple(peers))


# --- read-back state -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerState:
    public_key: NodePublic
    endpoint: str | None = None
    allowed_ips: tuple[Prefix, ...] = ()
    persistent_keepalive: int = 0
    last_handshake: int | None = None  # unix seconds; None = never
    rx_bytes: int = 0
    tx_bytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ips", _sorted_prefixes(self.allowed_ips))


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the device reports. `private_key` is None on a fresh device (never printed)."""

    private_key: NodePrivate | None = None
    listen_port: int = 0
    peers: tuple[PeerState, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(sorted(self.peers, key=_raw_key)))

    @property
    def public_key(self) -> NodePublic | None:
        return None if self.private_key is None else self.private_key.public()

    def peer(self, key: NodePublic) -> PeerState | None:
        return next((p for p in self.peers if p.public_key == key), None)

    def render(self) -> list[str]:
        """`wg show`-like lines for golden tests and debugging (no private key, no counters)."""
        pub = self.public_key.b64() if self.public_key else "(none)"
        lines = [f"interface: public key {pub}, listening port {self.listen_port}"]
        for p in self.peers:
            ips = ", ".join(str(a) for a in p.allowed_ips) or "(none)"
            lines.append(
                f"peer {p.public_key.short()}: endpoint {p.endpoint or '(none)'}; "
                f"allowed ips {ips}; keepalive {p.persistent_keepalive or 'off'}"
            )
        return lines


# --- the patch -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """A change to one peer. Fields left None are not written."""

    public_key: NodePublic
    remove: bool = False
    new: bool = False  # the peer does not exist yet (for describe() only)
    update_only: bool = False  # change the peer only if the device has it (never creates one)
    endpoint: str | None = None
    allowed_ips: tuple[Prefix, ...] | None = None  # replace the whole set when not None
    persistent_keepalive: int | None = None  # written last by every encoder


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    private_key: NodePrivate | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: tuple[PeerUpdate, ...] = ()  # changed and new peers first, then removals

    def is_empty(self) -> bool:
        return self.private_key is None and self.listen_port is None and not self.peers

    def describe(self) -> list[str]:
        """Human lines, one per change (`meshctl sync --dry-run` prints these)."""
        lines: list[str] = []
        if self.private_key is not None:
            lines.append(f"set private key (public key {self.private_key.public().b64()})")
        if self.listen_port is not None:
            lines.append(f"set listen port {self.listen_port}")
        for p in self.peers:
            who = f"peer {p.public_key.b64()}"
            if p.remove:
                lines.append(f"remove {who}")
                continue
            parts: list[str] = []
            if p.endpoint is not None:
                parts.append(f"endpoint {p.endpoint}")
            if p.allowed_ips is not None:
                ips = ", ".join(str(a) for a in p.allowed_ips) or "(none)"
                parts.append(f"allowed ips {ips}")
            if p.persistent_keepalive is not None:
                parts.append(f"keepalive {p.persistent_keepalive or 'off'}")
            lines.append(f"{'add' if p.new else 'update'} {who}: {'; '.join(parts)}")
        return lines


def _plan_peer(actual: PeerState | None, want: PeerConfig) -> PeerUpdate | None:
    if actual is None:
        return PeerUpdate(
            public_key=want.public_key,
            new=True,
            endpoint=want.endpoint,
            allowed_ips=want.allowed_ips,
            persistent_keepalive=want.persistent_keepalive or None,
        )
    endpoint = want.endpoint if want.endpoint not in (None, actual.endpoint) else None
    ips = want.allowed_ips if want.allowed_ips != actual.allowed_ips else None  # both canonical (sorted, unique)
    keepalive = (
        want.persistent_keepalive
        if want.persistent_keepalive != actual.persistent_keepalive
        else None
    )
    if endpoint is None and ips is None and keepalive is None:
        return None
    return PeerUpdate(
        public_key=want.public_key,
        endpoint=endpoint,
        allowed_ips=ips,
        persistent_keepalive=keepalive,
    )


def plan_update(state: DeviceState, config: DeviceConfig) -> DeviceUpdate:
    """The smallest patch turning `state` into `config` (see the module docstring)."""
    # Compare through the public key: WireGuard stores the key clamped (like `wg genkey`), so
    # an unclamped key reads back with different bytes yet is the same X25519 key.
    private_key = (
        config.private_key
        if state.private_key is None or state.public_key != config.private_key.public()
        else None
    )
    listen_port = (
        config.listen_port
        if config.listen_port not in (ANY_PORT, state.listen_port)
        else None
    )
    # Keyed by the raw bytes: hashed and compared in C (a key object's __hash__ is Python).
    actual = {p.public_key.raw: p for p in state.peers}
    wanted = {p.public_key.raw for p in config.peers}
    changes = [u for p in config.peers if (u := _plan_peer(actual.get(p.public_key.raw), p))]
    removals = [PeerUpdate(public_key=p.public_key, remove=True) for p in state.peers
                if p.public_key.raw not in wanted]
    return DeviceUpdate(
        private_key=private_key, listen_port=listen_port, peers=tuple(changes + removals)
    )


def apply_update(state: DeviceState, update: DeviceUpdate) -> DeviceState:
    """What a device looks like after `update` (the semantics every backend must have).

    Used by the fake backend in tests and by anyone who wants to predict a plan's result.
    Counters and handshakes of untouched peers are kept, which is the no-reset promise.
    """
    peers = {p.public_key: p for p in state.peers}
    for u in update.peers:
        if u.remove:
            peers.pop(u.public_key, None)
            continue
        if u.update_only and u.public_key not in peers:
            continue
        old = peers.get(u.public_key) or PeerState(public_key=u.public_key)
        peers[u.public_key] = PeerState(
            public_key=u.public_key,
            endpoint=u.endpoint if u.endpoint is not None else old.endpoint,
            allowed_ips=u.allowed_ips if u.allowed_ips is not None else old.allowed_ips,
            persistent_keepalive=(
                u.persistent_keepalive
                if u.persistent_keepalive is not None
                else old.persistent_keepalive
            ),
            last_handshake=old.last_handshake,
            rx_bytes=old.rx_bytes,
            tx_bytes=old.tx_bytes,
        )
    # An allowed IP belongs to one peer at a time: a later owner steals it (WireGuard does this).
    owner: dict[Prefix, NodePublic] = {}
    for u in update.peers:
        if not u.remove and u.allowed_ips is not None and u.public_key in peers:
            for ip in u.allowed_ips:
                owner[ip] = u.public_key
    final = []
    for key, p in peers.items():
        kept = tuple(ip for ip in p.allowed_ips if owner.get(ip, key) == key)
        final.append(
            p if kept == p.allowed_ips else PeerState(
                public_key=p.public_key, endpoint=p.endpoint, allowed_ips=kept,
                persistent_keepalive=p.persistent_keepalive, last_handshake=p.last_handshake,
                rx_bytes=p.rx_bytes, tx_bytes=p.tx_bytes,
            )
        )
    return DeviceState(
        private_key=update.private_key if update.private_key is not None else state.private_key,
        listen_port=update.listen_port if update.listen_port is not None else state.listen_port,
        peers=tuple(final),
    )
