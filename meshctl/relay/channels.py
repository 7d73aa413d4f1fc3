"""Relay channels: a pair of UDP ports on the relay that joins two members' WireGuard (sans-IO).

The relayed path through frames (SendPacket/RecvPacket) needs meshctl on both ends: WireGuard
talks to a loopback proxy, the proxy to the relay. A channel takes meshctl out of the data
path, as a TURN allocation does, and keeps WireGuard unmodified (kernel or wireguard-go):

    A's WireGuard <-> relay:port_a  ==relay forwards==  relay:port_b <-> B's WireGuard

A's endpoint for B is relay:port_a; what A sends there leaves the relay from port_b to B's
address, so B's WireGuard sees B's endpoint for A, relay:port_b, as the source (and the
other way round). Every packet crosses the relay once and no client process at all.

How a channel comes to be, over the members' authenticated relay sessions:

    A -> ChannelRequest(B)                    relay opens port_a and port_b
    relay -> A: Channel(B, port_a, token_a, OFFERED); relay -> B: Channel(A, port_b, token_b, OFFERED)
    A: bind datagram (token_a) from WireGuard's own port to relay:port_a; B the same to port_b
    relay, once both are bound (and heard lately): Channel(READY) to both -> each sets its WireGuard endpoint

A bind datagram is sent from WireGuard's listen port (meshctl's raw socket, as STUN is), so
the relay learns the address each NAT gave WireGuard's socket towards that very port, and
the NAT learns to let the relay's packets in. From then on a port forwards only what comes
from its bound address; anything else there is dropped unless it is a valid bind, which
moves the port to a new address (a NAT that rebinds). Members bind again every
BIND_INTERVAL_S; a side heard from neither by bind nor by data for CHANNEL_IDLE_S closes the
channel, and so does either member's session ending (leaving, revoked, replaced).

A member that asks again for a channel it has is told READY only if a bind (or data) from it,
and one from its peer, arrived in the last CONFIRM_FRESH_S. That is how it checks, when it turns
to the relay after a direct path died, that both WireGuard ports still reach the relay: a
channel bound a minute ago proves nothing if the same block that killed the direct path now
drops its packets too, on either side (the peer's side of a channel it left for the direct
path would swallow what the relay forwards to it). A peer that is on the channel and idle
binds every BIND_INTERVAL_S, so the one asking waits at most that long, on the proxy. The same
holds when a bind completes a channel: the side bound before must have been heard in the last
CONFIRM_FRESH_S too (a side bound during a brief relayed spell, then left for a direct path,
stops binding; if that side's port is now blocked, its old binding would swallow the flow). A
member waiting for its channel binds every second, so a live side is always fresh.

The bind token (random, per side, given only over the member's own session) is what makes
a port follow an address: an off-path sender cannot move it. The relay still never
decrypts anything: a channel carries WireGuard packets as they are.

Pure: no sockets, no clock. Ports come from an injected PortAllocator (the shell opens the
sockets), randomness from an injected function.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, Protocol

from meshctl.errors import ParseError

BIND_MAGIC: Final = b"mcRB"  # top bits 01 like a relay frame: never STUN, never WireGuard
BIND_VERSION: Final = 1
BIND_TOKEN_LEN: Final = 16  # 128 random bits per side
BIND_LEN: Final = len(BIND_MAGIC) + 1 + BIND_TOKEN_LEN
CONFIRM_FRESH_S: Final = 3.0  # a member checking its channel binds every second, then asks
BIND_INTERVAL_S: Final = 10.0  # clients bind again this often: a rebound NAT is found within it
CHANNEL_IDLE_S: Final = 60.0  # a side silent this long (no bind, no data) closes the channel
MAX_CHANNELS_PER_MEMBER: Final = 256
MAX_CHANNELS: Final = 4096  # four sockets each on the relay


class ChannelState(IntEnum):
    """What a Channel frame tells a member about its channel to one peer."""

    CLOSED = 0  # none (the peer is not on this relay, a limit was hit, or it closed)
    OFFERED = 1  # a port and a token: bind to it from WireGuard's port
    READY = 2  # both sides bound: WireGuard may use relay:port as the peer's endpoint


class BindParseError(ParseError):
    """Not a bind datagram of this version."""


def marshal_bind(token: bytes) -> bytes:
    if len(token) != BIND_TOKEN_LEN:
        raise ValueError(f"bind token must be {BIND_TOKEN_LEN} bytes")
    return BIND_MAGIC + bytes([BIND_VERSION]) + token


def parse_bind(data: bytes) -> bytes:
    """The token of a bind datagram."""
    if len(data) != BIND_LEN:
        raise BindParseError(f"bind datagram of {len(data)} bytes (a bind is {BIND_LEN})")
    if data[: len(BIND_MAGIC)] != BIND_MAGIC:
        raise BindParseError("not a bind datagram")
    if data[len(BIND_MAGIC)] != BIND_VERSION:
        raise BindParseError(f"bind version {data[len(BIND_MAGIC)]} (this relay speaks {BIND_VERSION})")
    return bytes(data[len(BIND_MAGIC) + 1 :])


Addr = tuple[str, int]  # what the shell's socket reports as the sender


class PortAllocator(Protocol):
    """The shell's side: sockets for a channel's two ports."""

    def open_pair(self) -> tuple[int, int] | None:
        """Two fresh ports (None: none left, or out of file descriptors)."""

    def bind(self, port: int, addr: Addr) -> None:
        """From now on `port` exchanges data with `addr` only."""

    def close_pair(self, ports: tuple[int, int]) -> None:
        """Close both ports' sockets."""


@dataclass(frozen=True, slots=True)
class Member:
    """A logged-in client: its WireGuard key and the session's connection (where frames go)."""

    wg_key: bytes
    conn: Hashable


@dataclass(frozen=True, slots=True)
class Notice:
    """A Channel frame to send: tell `conn` about its channel to `peer`."""

    conn: Hashable
    peer: bytes  # the other member's WireGuard key
    port: int
    token: bytes
    state: ChannelState


@dataclass(slots=True)
class _Side:
    member: Member
    port: int
    token: bytes
    last_seen: float  # the last bind or data from the member's WireGuard port
    bound: Addr | None = None


@dataclass(slots=True)
class Channel:
    sides: tuple[_Side, _Side]
    ready: bool = False

    def other(self, side: _Side) -> _Side:
        return self.sides[1] if side is self.sides[0] else self.sides[0]

    @property
    def ports(self) -> tuple[int, int]:
        return self.sides[0].port, self.sides[1].port


@dataclass(slots=True)
class ChannelStats:
    opened: int = 0
    closed: int = 0
    binds: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class ChannelTable:
    """Every channel of one relay; inputs from the relay core, notices out."""

    def __init__(self, ports: PortAllocator, randbytes: Callable[[int], bytes], *,
                 max_per_member: int = MAX_CHANNELS_PER_MEMBER, max_total: int = MAX_CHANNELS,
                 idle_s: float = CHANNEL_IDLE_S) -> None:
        self._ports = ports
        self._rand = randbytes
        self.max_per_member = max_per_member
        self.max_total = max_total
        self.idle_s = idle_s
        self._by_pair: dict[frozenset[bytes], Channel] = {}
        self._by_port: dict[int, tuple[Channel, _Side]] = {}
        self._count: dict[bytes, int] = {}
        self.stats = ChannelStats()

    def __len__(self) -> int:
        return len(self._by_pair)

    # -- inputs ----------------------------------------------------------------------------

    def request(self, me: Member, peer_key: bytes, peer: Member | None, now: float) -> list[Notice]:
        """`me` asks for a channel to the member with WireGuard key `peer_key`; `peer` is its
        session, None when it has none on this relay."""
        if peer is None or peer.wg_key != peer_key or peer_key == me.wg_key:
            self.stats.refuse("no_peer")
            return [self._closed(me, peer_key)]
        channel = self._by_pair.get(frozenset((me.wg_key, peer.wg_key)))
        if channel is not None:
            mine = next(s for s in channel.sides if s.member.wg_key == me.wg_key)
            fresh = all(now - s.last_seen <= CONFIRM_FRESH_S for s in channel.sides)  # docstring
            return [self._notice(channel, mine, confirmed=fresh)]
        if (len(self._by_pair) >= self.max_total or self._count.get(me.wg_key, 0) >= self.max_per_member
                or self._count.get(peer.wg_key, 0) >= self.max_per_member):
            self.stats.refuse("limit")
            return [self._closed(me, peer.wg_key)]
        ports = self._ports.open_pair()
        if ports is None:
            self.stats.refuse("no_ports")
            return [self._closed(me, peer.wg_key)]
        sides = (_Side(me, ports[0], self._rand(BIND_TOKEN_LEN), now),
                 _Side(peer, ports[1], self._rand(BIND_TOKEN_LEN), now))
        channel = Channel(sides)
        self._by_pair[frozenset((me.wg_key, peer.wg_key))] = channel
        for side in sides:
            self._by_port[side.port] = (channel, side)
            self._count[side.member.wg_key] = self._count.get(side.member.wg_key, 0) + 1
        self.stats.opened += 1
        return [self._notice(channel, s) for s in sides]

    def receive_bind(self, port: int, addr: Addr, data: bytes, now: float) -> list[Notice]:
        """A datagram on a channel port from an address it is not bound to."""
        found = self._by_port.get(port)
        if found is None:
            return []
        channel, side = found
        try:
            token = parse_bind(data)
        except BindParseError:
            self.stats.refuse("stray")
            return []
        if not hmac.compare_digest(token, side.token):
            self.stats.refuse("bad_token")
            return []
        self.stats.binds += 1
        side.last_seen = now
        moved = side.bound != addr
        if moved:
            side.bound = addr
            self._ports.bind(port, addr)
        if channel.ready:
            return [self._notice(channel, side)] if moved else []  # moved: the other side needs no news
        other = channel.other(side)
        if other.bound is None or now - other.last_seen > CONFIRM_FRESH_S:
            return []  # the other side may be gone or cut off: it must bind again first (docstring)
        channel.ready = True
        return [self._notice(channel, s) for s in channel.sides]

    def heard(self, port: int, now: float) -> None:
        """Data arrived on `port` from its bound address (the shell calls this once per batch)."""
        found = self._by_port.get(port)
        if found is not None:
            found[1].last_seen = now  # a bind from the bound address arrives as data, and counts

    def member_gone(self, wg_key: bytes) -> list[Notice]:
        """The member's session ended: close its channels, tell the peers that are still here."""
        out = []
        for pair, channel in list(self._by_pair.items()):
            if wg_key in pair:
                other = next(s for s in channel.sides if s.member.wg_key != wg_key)
                self._close(channel)
                out.append(self._closed(other.member, wg_key))
        return out

    def expire(self, now: float) -> list[Notice]:
        """Close channels with a side silent for idle_s; tell both members."""
        out = []
        for channel in list(self._by_pair.values()):
            if any(now - s.last_seen > self.idle_s for s in channel.sides):
                self._close(channel)
                a, b = channel.sides
                out += [self._closed(a.member, b.member.wg_key), self._closed(b.member, a.member.wg_key)]
        return out

    # -- what the shell's forwarding needs ---------------------------------------------------

    def partner(self, port: int) -> tuple[int, bytes] | None:
        """(the paired port, the WireGuard key of the member bound to `port`), if a channel."""
        found = self._by_port.get(port)
        if found is None:
            return None
        channel, side = found
        return channel.other(side).port, side.member.wg_key

    def channels_of(self, wg_key: bytes) -> int:
        return self._count.get(wg_key, 0)

    # -- internals ---------------------------------------------------------------------------

    def _notice(self, channel: Channel, side: _Side, confirmed: bool = True) -> Notice:
        state = ChannelState.READY if channel.ready and confirmed else ChannelState.OFFERED
        return Notice(side.member.conn, channel.other(side).member.wg_key, side.port, side.token, state)

    @staticmethod
    def _closed(member: Member, peer: bytes) -> Notice:
        return Notice(member.conn, peer, 0, b"", ChannelState.CLOSED)

    def _close(self, channel: Channel) -> None:
        a, b = channel.sides
        del self._by_pair[frozenset((a.member.wg_key, b.member.wg_key))]
        for side in channel.sides:
            self._by_port.pop(side.port, None)
            left = self._count.get(side.member.wg_key, 1) - 1
            if left:
                self._count[side.member.wg_key] = left
            else:
                self._count.pop(side.member.wg_key, None)
        self._ports.close_pair(channel.ports)
        self.stats.closed += 1
