"""Split a DeviceUpdate into netlink-sized WireGuard set messages (pure).

wireguard-tools fills a fixed buffer (MNL_SOCKET_BUFFER_SIZE) and, when a peer or an allowed-IP
list does not fit, sends what it has and starts a new message that names the same peer again
and carries the rest of its allowed IPs. This module does the same with a byte estimate of the
netlink attributes, so the kernel backend never builds an unbounded message:

- device attributes (private key, listen port) go in the first message;
- a peer that does not fit in the current message starts the next one;
- a peer whose allowed IPs alone overflow a message is continued in the next message with
  `UPDATE_ONLY` and without `REPLACE_ALLOWEDIPS`, so the continuation appends to the list the
  first part replaced;
- keepalives come last, in entries of their own (`UPDATE_ONLY`), as in the UAPI encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from meshctl.keys import NodePrivate, NodePublic
from meshctl.wg.config import DeviceUpdate, Prefix, parse_endpoint

# Values from linux/include/uapi/linux/wireguard.h.
WGPEER_F_REMOVE_ME: Final = 0x1
WGPEER_F_REPLACE_ALLOWEDIPS: Final = 0x2
WGPEER_F_UPDATE_ONLY: Final = 0x4

# wireguard-tools sends messages of at most one page (MNL_SOCKET_BUFFER_SIZE); do the same.
MESSAGE_BUDGET_BYTES: Final = 4096

_NLA_HDR: Final = 4
_MSG_HDR: Final = 16 + 4  # nlmsghdr + genlmsghdr
_KEY_ATTR: Final = _NLA_HDR + 32
_U16_ATTR: Final = 8  # 4 header + 2 value + 2 padding
_U32_ATTR: Final = 8
_ENDPOINT_V4: Final = _NLA_HDR + 16  # sockaddr_in
_ENDPOINT_V6: Final = _NLA_HDR + 28  # sockaddr_in6
_IP_V4: Final = _NLA_HDR + _U16_ATTR + (_NLA_HDR + 4) + _NLA_HDR + 4  # nest, family, addr, cidr
_IP_V6: Final = _NLA_HDR + _U16_ATTR + (_NLA_HDR + 16) + _NLA_HDR + 4
_PEERS_NEST: Final = _NLA_HDR


def _align(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One WGDEVICE_A_PEERS entry."""

    public_key: NodePublic
    flags: int = 0
    endpoint: str | None = None
    allowed_ips: tuple[Prefix, ...] = ()
    persistent_keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One WG_CMD_SET_DEVICE message."""

    private_key: NodePrivate | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: tuple[PeerEntry, ...] = ()


def ip_size(ip: Prefix) -> int:
    return _IP_V4 if ip.version == 4 else _IP_V6


def peer_fixed_size(entry: PeerEntry) -> int:
    """Bytes of a peer entry without its allowed IPs."""
    size = _NLA_HDR + _KEY_ATTR + _U32_ATTR  # nest, public key, flags
    if entry.endpoint is not None:
        size += _ENDPOINT_V4 if parse_endpoint(entry.endpoint)[0].version == 4 else _ENDPOINT_V6
    if entry.persistent_keepalive is not None:
        size += _U16_ATTR
    if entry.allowed_ips or entry.flags & WGPEER_F_REPLACE_ALLOWEDIPS:
        size += _NLA_HDR  # the allowed-IPs nest
    return size


def peer_size(entry: PeerEntry) -> int:
    return peer_fixed_size(entry) + sum(ip_size(ip) for ip in entry.allowed_ips)


def message_size(ifname: str, msg: DeviceMessage) -> int:
    size = _MSG_HDR + _align(_NLA_HDR + len(ifname) + 1)
    if msg.private_key is not None:
        size += _KEY_ATTR
    if msg.listen_port is not None:
        size += _U16_ATTR
    if msg.peers:
        size += _PEERS_NEST + sum(peer_size(p) for p in msg.peers)
    return size


def update_entries(update: DeviceUpdate) -> list[PeerEntry]:
    """The peer entries of `update` in write order: changes and removals, then keepalives."""
    entries: list[PeerEntry] = []
    for p in update.peers:
        if p.remove:
            entries.append(PeerEntry(public_key=p.public_key, flags=WGPEER_F_REMOVE_ME))
            continue
        entries.append(
            PeerEntry(
                public_key=p.public_key,
                flags=(WGPEER_F_REPLACE_ALLOWEDIPS if p.allowed_ips is not None else 0)
                | (WGPEER_F_UPDATE_ONLY if p.update_only else 0),
                endpoint=p.endpoint,
                allowed_ips=p.allowed_ips or (),
            )
        )
    entries.extend(
        PeerEntry(
            public_key=p.public_key,
            flags=WGPEER_F_UPDATE_ONLY,
            persistent_keepalive=p.persistent_keepalive,
        )
        for p in update.peers
        if not p.remove and p.persistent_keepalive is not None
    )
    return entries


def split_update(
    update: DeviceUpdate, ifname: str, budget: int = MESSAGE_BUDGET_BYTES
) -> list[DeviceMessage]:
    """Messages that together apply `update`, each at most `budget` bytes (estimated)."""
    if update.is_empty():
        return []
    head = DeviceMessage(private_key=update.private_key, listen_port=update.listen_port)
    if message_size(ifname, head) + _PEERS_NEST + peer_fixed_size(
        PeerEntry(public_key=NodePublic(bytes(32)), endpoint="[::1]:1", persistent_keepalive=0)
    ) + _IP_V6 > budget:
        raise ValueError(f"netlink budget {budget} too small for one peer")
    messages: list[DeviceMessage] = []
    current = head
    used = message_size(ifname, current) + _PEERS_NEST

    def flush() -> None:
        nonlocal current, used
        messages.append(current)
        current = DeviceMessage()
        used = message_size(ifname, current) + _PEERS_NEST

    def push(entry: PeerEntry) -> None:
        nonlocal current, used
        current = DeviceMessage(current.private_key, current.listen_port, (*current.peers, entry))
        used += peer_size(entry)

    for entry in update_entries(update):
        if used + peer_size(entry) <= budget:
            push(entry)
            continue
        # Start a fresh message unless the entry fits nowhere whole (then split it here).
        fresh_room = budget - message_size(ifname, DeviceMessage()) - _PEERS_NEST
        if current.peers and peer_size(entry) <= fresh_room:
            flush()
            push(entry)
            continue
        first = True
        rest = list(entry.allowed_ips)
        while first or rest:
            part = PeerEntry(
                public_key=entry.public_key,
                flags=entry.flags if first else WGPEER_F_UPDATE_ONLY,
                endpoint=entry.endpoint if first else None,
                persistent_keepalive=entry.persistent_keepalive if first else None,
            )
            room = budget - used - peer_fixed_size(part) - _NLA_HDR
            ips: list[Prefix] = []
            while rest and ip_size(rest[0]) <= room:
                room -= ip_size(rest[0])
                ips.append(rest.pop(0))
            if not ips and rest:
                flush()
                continue
            push(PeerEntry(part.public_key, part.flags, part.endpoint, tuple(ips),
                           part.persistent_keepalive))
            first = False
            if rest:
                flush()
    if current.peers or current.private_key is not None or current.listen_port is not None:
        messages.append(current)
    return messages
