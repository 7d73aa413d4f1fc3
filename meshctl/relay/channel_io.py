"""The relay's channel sockets and the forwarding between them (shell; see channels.py).

Each channel port has two UDP sockets in one SO_REUSEPORT group:
- a listening socket (not connected): whatever reaches the port from an address it is not
  bound to, which is a bind or is dropped (`RelayCore.receive_bind`);
- once bound, a data socket connected to the member's address: Linux prefers the connected
  socket of a group, so the member's datagrams, and only they, arrive there.

Forwarding is one batch at a time (mmsg.Batch): what a member's data socket holds goes out
of the paired port's data socket, to the other member, without being looked at. Each batch
is charged to the sending member's token bucket (the same per-member rate limit as frames),
and a wake-up reads at most MAX_BATCHES_PER_WAKE batches, so a flooding member cannot keep
the loop from the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from meshctl.udp import mmsg, sockets

if TYPE_CHECKING:
    from meshctl.relay.server_core import RelayCore

log = logging.getLogger(__name__)

MAX_BATCHES_PER_WAKE: Final = 4
STRAYS_PER_WAKE: Final = 32  # binds and strays read per wake-up of a listening socket
LISTEN_BUFFER_BYTES: Final = 256 * 1024  # binds are tiny and rare
RECV_SIZE: Final = 65_535

Addr = tuple[str, int]


class ChannelPorts:
    """channels.PortAllocator for a RelayCore, and the data path of its channels."""

    def __init__(self, host: str, flush: Callable[[], None],
                 port_range: tuple[int, int] | None = None) -> None:
        """`flush`: drain the core's output queue (after a bind it answered)."""
        self.host = host
        self._flush = flush
        self.port_range = port_range
        self._next = port_range[0] if port_range else 0
        self._core: RelayCore | None = None
        self._listen: dict[int, socket.socket] = {}
        self._data: dict[int, socket.socket] = {}
        self._routes: dict[int, tuple[int, bytes]] = {}  # port -> (paired port, its member's wg key)
        self._batch = mmsg.Batch() if mmsg.available() else None

    def attach(self, core: RelayCore) -> None:
        self._core = core

    @property
    def open_ports(self) -> int:
        return len(self._listen)

    # -- channels.PortAllocator -------------------------------------------------------------

    def open_pair(self) -> tuple[int, int] | None:
        opened: list[socket.socket] = []
        for _ in range(2):
            sock = self._listening_socket()
            if sock is None:
                for s in opened:
                    s.close()
                return None
            opened.append(sock)
        loop = asyncio.get_running_loop()
        ports = []
        for sock in opened:
            port = sock.getsockname()[1]
            self._listen[port] = sock
            loop.add_reader(sock.fileno(), self._on_stray, port)
            ports.append(port)
        return ports[0], ports[1]

    def bind(self, port: int, addr: Addr) -> None:
        assert self._core is not None
        self._close_data(port)
        route = self._core.channels.partner(port)
        if route is None or port not in self._listen:
            return
        try:
            sock = sockets.udp_socket(self.host, port, reuse_port=True, connect=addr)
        except OSError as exc:  # out of file descriptors: the channel stays unusable, frames still work
            log.warning("channel port %d: cannot connect a socket to %s: %s", port, addr, exc)
            return
        self._data[port] = sock
        self._routes[port] = route
        asyncio.get_running_loop().add_reader(sock.fileno(), self._forward, port)

    def close_pair(self, ports: tuple[int, int]) -> None:
        for port in ports:
            self._close_data(port)
            sock = self._listen.pop(port, None)
            if sock is not None:
                _unwatch(sock)
                sock.close()

    def close_all(self) -> None:
        for port in list(self._listen):
            self._close_data(port)
            _unwatch(self._listen[port])
            self._listen.pop(port).close()

    # -- internals ----------------------------------------------------------------------------

    def _listening_socket(self) -> socket.socket | None:
        if self.port_range is None:
            try:
                return sockets.udp_socket(self.host, 0, LISTEN_BUFFER_BYTES, reuse_port=True)
            except OSError as exc:
                log.warning("cannot open a channel port: %s", exc)
                return None
        first, last = self.port_range
        for _ in range(last - first + 1):
            port = self._next
            self._next = first if port >= last else port + 1
            if port in self._listen:
                continue
            try:
                return sockets.udp_socket(self.host, port, LISTEN_BUFFER_BYTES, reuse_port=True)
            except OSError:  # taken by another program: try the next one
                continue
        log.warning("no free channel port in %d-%d", first, last)
        return None

    def _close_data(self, port: int) -> None:
        self._routes.pop(port, None)
        sock = self._data.pop(port, None)
        if sock is not None:
            _unwatch(sock)
            sock.close()

    def _on_stray(self, port: int) -> None:
        sock = self._listen.get(port)
        core = self._core
        if sock is None or core is None:
            return
        now = time.monotonic()
        for _ in range(STRAYS_PER_WAKE):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            core.receive_bind(port, (addr[0], addr[1]), data, now)
        self._flush()

    def _forward(self, port: int) -> None:
        core = self._core
        sock = self._data.get(port)
        route = self._routes.get(port)
        if core is None or sock is None or route is None:
            return
        out_port, member = route
        stats = core.stats
        now = time.monotonic()
        if self._batch is None:
            self._forward_plain(sock, out_port, member, now)
        else:
            batch, fd = self._batch, sock.fileno()
            for _ in range(MAX_BATCHES_PER_WAKE):
                n = batch.recv(fd)
                if not n:
                    break
                size = batch.prepare_send(n)
                stats.channel_packets_in += n
                stats.channel_bytes_in += size
                out = self._data.get(out_port)
                if out is None:
                    stats.drop("channel_unbound", n)
                    continue
                sess = core.session_of_key(member)
                if sess is None or not sess.bucket.take(size, now):
                    stats.drop("channel_rate_limited", n)
                    continue
                sent = batch.send(out.fileno(), n)
                stats.channel_packets_out += sent
                if sent < n:
                    stats.drop("channel_send_full", n - sent)
                if n < batch.slots:
                    break
        core.channels.heard(port, now)

    def _forward_plain(self, sock: socket.socket, out_port: int, member: bytes, now: float) -> None:
        """Without recvmmsg: the same, a datagram at a time."""
        assert self._core is not None
        stats = self._core.stats
        for _ in range(MAX_BATCHES_PER_WAKE * mmsg.SLOTS):
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            stats.channel_packets_in += 1
            stats.channel_bytes_in += len(data)
            out = self._data.get(out_port)
            sess = self._core.session_of_key(member)
            if out is None:
                stats.drop("channel_unbound")
            elif sess is None or not sess.bucket.take(len(data), now):
                stats.drop("channel_rate_limited")
            else:
                try:
                    out.send(data)
                    stats.channel_packets_out += 1
                except OSError:
                    stats.drop("channel_send_full")


def _unwatch(sock: socket.socket) -> None:
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        asyncio.get_running_loop().remove_reader(sock.fileno())
