"""The relayed data path: one loopback UDP socket per relayed peer (asyncio shell).

WireGuard (kernel or wireguard-go) is configured with `endpoint_for(peer)` = 127.0.0.1:PORT
as that peer's endpoint. What WireGuard sends there is handed to the relay client addressed
to the peer's WireGuard key; what the relay delivers from that peer is sent from the same
socket to WireGuard's listen port, so WireGuard sees it come from the endpoint it expects
(and its roaming logic keeps the endpoint there).

Only ciphertext passes through: WireGuard encrypts before the proxy and decrypts after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from meshctl.keys import NodePublic
from meshctl.udp import sockets

log = logging.getLogger(__name__)

# One socket per relayed peer; bounded so a flood of packets from many keys cannot exhaust fds.
MAX_PEERS: Final = 4096


@dataclass(slots=True)
class ProxyStats:
    to_relay: int = 0
    from_relay: int = 0
    dropped: int = 0


class _PeerSocket:
    __slots__ = ("peer", "sock", "endpoint")

    def __init__(self, peer: NodePublic, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.endpoint = f"{host}:{port}"


class RelayProxy:
    """Loopback endpoints for relayed peers, between WireGuard and a RelayClient.

    `send(peer, packet) -> bool` is usually `RelayClient.send`; received relay packets for
    WireGuard go to `deliver(src, packet)`.
    """

    def __init__(self, send: Callable[[NodePublic, bytes], bool], wg_port: int, *,
                 wg_host: str = "127.0.0.1", bind_host: str = "127.0.0.1",
                 buffer_bytes: int = sockets.BUFFER_BYTES, auto_create: bool = True) -> None:
        self._send = send
        self.wg_addr = (wg_host, wg_port)
        self.bind_host = bind_host
        self.buffer_bytes = buffer_bytes
        self.auto_create = auto_create
        self._peers: dict[NodePublic, _PeerSocket] = {}
        self._by_raw: dict[bytes, _PeerSocket] = {}  # the hot path looks up by key bytes
        self.stats = ProxyStats()

    def endpoint_for(self, peer: NodePublic) -> str:
        """"127.0.0.1:PORT" to configure as `peer`'s WireGuard endpoint (created on first use).

        Must be called from the event loop's thread.
        """
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._open(peer)
        return entry.endpoint

    def peers(self) -> dict[NodePublic, str]:
        return {k: v.endpoint for k, v in self._peers.items()}

    def remove(self, peer: NodePublic) -> None:
        entry = self._peers.pop(peer, None)
        if entry is not None:
            self._by_raw.pop(peer.raw, None)
            self._close(entry)

    def close(self) -> None:
        for entry in list(self._peers.values()):
            self._close(entry)
        self._peers.clear()
        self._by_raw.clear()

    def deliver(self, src: NodePublic, payload: bytes) -> None:
        """A WireGuard packet the relay brought from `src`: into WireGuard from src's endpoint."""
        entry = self._by_raw.get(src.raw)
        if entry is None:
            if not self.auto_create or len(self._peers) >= MAX_PEERS:
                self.stats.dropped += 1
                return
            # The peer reached us first: WireGuard learns this endpoint from the packet itself.
            entry = self._open(src)
        try:
            entry.sock.sendto(payload, self.wg_addr)
            self.stats.from_relay += 1
        except OSError:
            self.stats.dropped += 1

    def _open(self, peer: NodePublic) -> _PeerSocket:
        if len(self._peers) >= MAX_PEERS:
            raise OverflowError(f"more than {MAX_PEERS} relayed peers")
        sock = sockets.udp_socket(self.bind_host, 0, self.buffer_bytes)
        entry = _PeerSocket(peer, sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable, entry)
        self._peers[peer] = entry
        self._by_raw[peer.raw] = entry
        log.debug("relay proxy for %s on %s", peer.short(), entry.endpoint)
        return entry

    def _close(self, entry: _PeerSocket) -> None:
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(entry.sock.fileno())
        entry.sock.close()

    def _on_readable(self, entry: _PeerSocket) -> None:
        recv = entry.sock.recvfrom
        send = self._send
        peer = entry.peer
        wg_addr = self.wg_addr
        stats = self.stats
        for _ in range(sockets.RECV_BATCH):
            try:
                data, addr = recv(sockets.RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if addr[:2] != wg_addr:  # only WireGuard itself may send through this endpoint
                stats.dropped += 1
                continue
            if send(peer, data):
                stats.to_relay += 1
            else:
                stats.dropped += 1

