"""The MagicDNS listener: asyncio UDP and TCP on the given addresses (shell).

Every decision is `resolver.answer()`; this module only moves bytes. Who asks comes from the
source address (`resolver.asker_of`): strangers are dropped before the query is parsed, each
member address gets MEMBER_QUERIES_PER_S (a bounded table of token buckets, so a flood costs
one dictionary lookup per query past its bucket), and only the node itself (not limited: it can
reach its upstreams directly anyway) has names outside the mesh forwarded to the upstream
resolvers (UDP, retried over TCP when the reply is truncated), at most `max_forwards` at a time;
when all upstreams fail or the limit is reached it gets SERVFAIL at once, never silence.

Sockets are bound with IP_FREEBIND, so the server can start before 100.100.100.100
or the mesh address exists on the interface (the router adds them; ordering then
does not matter and a re-added address needs no rebind).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from meshctl.dns import resolver
from meshctl.dns.resolver import Action, Asker
from meshctl.dns.zone import MAGIC_ADDRESS, Zone
from meshctl.ratelimit import BucketTable

__all__ = ["DEFAULT_PORT", "MAGIC_ADDRESS", "DnsServer", "Endpoint", "ServerStats"]
from meshctl.errors import MeshctlError

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 53
FORWARD_TIMEOUT_S: Final = 2.0  # per upstream; a stub resolver retries after ~5 s anyway
MAX_CONCURRENT_FORWARDS: Final = 256  # beyond this, SERVFAIL instead of queueing without bound
MAX_TCP_CLIENTS: Final = 128
TCP_IDLE_TIMEOUT_S: Final = 10.0  # RFC 7766 suggests seconds, not minutes
UDP_BATCH: Final = 64  # datagrams read per wakeup before yielding to other tasks
# A member's own MagicDNS answers its lookups; asking another node's is occasional (`dig @node`).
MEMBER_QUERIES_PER_S: Final = 100.0
MEMBER_QUERY_BURST: Final = 200.0
MAX_TRACKED_SOURCES: Final = 4096  # buckets and who-asks answers kept (two addresses per member)
_IP_FREEBIND: Final = 15  # linux/in.h; socket module lacks the name
_IPV6_FREEBIND: Final = 78  # linux/in6.h (kernel >= 4.15)

Endpoint = tuple[str, int]  # (host, port)


@dataclass(slots=True)
class ServerStats:
    """Counters since start (for `meshctl status` and the benchmark)."""

    queries: int = 0
    answered: int = 0
    forwarded: int = 0
    dropped: int = 0
    servfail: int = 0
    strangers: int = 0  # queries from outside the mesh, dropped unread
    rate_limited: int = 0  # member queries past their bucket, dropped unread


class DnsServer:
    """MagicDNS on `listen` (host, port) endpoints; port 0 picks one (shared by UDP and TCP)."""

    def __init__(
        self,
        zone: Zone,
        listen: Sequence[Endpoint],
        upstreams: Sequence[Endpoint] = (),
        *,
        forward_timeout_s: float = FORWARD_TIMEOUT_S,
        max_forwards: int = MAX_CONCURRENT_FORWARDS,
    ) -> None:
        self._zone = zone
        self._listen = list(listen)
        self._upstreams: tuple[Endpoint, ...] = tuple(upstreams)
        self._forward_timeout_s = forward_timeout_s
        self._max_forwards = max_forwards
        self._forwards = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.Server] = []
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._bound: list[Endpoint] = []
        self._rng = random.SystemRandom()  # upstream query IDs must not be guessable
        self._askers: dict[str, Asker] = {}
        self._buckets: BucketTable[str] = BucketTable(MEMBER_QUERIES_PER_S, MEMBER_QUERY_BURST, MAX_TRACKED_SOURCES)
        self._clock = 0.0  # the loop's time at the last wakeup
        self.stats = ServerStats()

    # -- public API -----------------------------------------------------------------

    @property
    def addresses(self) -> list[Endpoint]:
        """The endpoints actually bound (port 0 resolved), after start()."""
        return list(self._bound)

    @property
    def zone(self) -> Zone:
        return self._zone

    def update_zone(self, zone: Zone) -> None:
        """Serve `zone` from the next query on (renames and revocations, no restart)."""
        self._zone = zone
        self._askers.clear()  # a revoked member's address is a stranger's from now on

    def set_upstreams(self, upstreams: Sequence[Endpoint]) -> None:
        """Where non-mesh names go; empty means REFUSED for them (split DNS)."""
        self._upstreams = tuple(upstreams)

    async def start(self) -> None:
        """Bind every endpoint (UDP and TCP); raise MeshctlError and bind nothing on failure."""
        loop = asyncio.get_running_loop()
        try:
            for host, port in self._listen:
                udp_sock = _bound_socket(host, port, socket.SOCK_DGRAM)
                actual_port = int(udp_sock.getsockname()[1])
                self._udp.append(udp_sock)
                loop.add_reader(udp_sock.fileno(), self._on_udp_readable, udp_sock)
                tcp_sock = _bound_socket(host, actual_port, socket.SOCK_STREAM)
                server = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)
                self._tcp.append(server)
                self._bound.append((host, actual_port))
        except (OSError, ValueError) as exc:
            await self.stop()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MeshctlError(
                f"cannot listen for DNS on {host}:{port}: {why}",
                hint="is another DNS server bound to that address? (ss -lunp 'sport = 53')",
            ) from None
        log.info("MagicDNS listening on %s", ", ".join(f"{h}:{p}" for h, p in self._bound))

    async def stop(self) -> None:
        """Close every socket and cancel forwards in flight. Safe to call twice."""
        loop = asyncio.get_running_loop()
        for sock in self._udp:
            loop.remove_reader(sock.fileno())
            sock.close()
        for server in self._tcp:
            server.close()
        for writer in list(self._tcp_writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._tcp:
            await server.wait_closed()
        self._udp, self._tcp, self._bound = [], [], []

    # -- UDP ---------------------------------------------------------------------

    def _asker(self, host: str) -> Asker:
        who = self._askers.get(host)
        if who is None:
            try:
                who = resolver.asker_of(ipaddress.ip_address(host.partition("%")[0]), self._zone)  # fe80::1%eth0
            except ValueError:
                return Asker.STRANGER
            if len(self._askers) >= MAX_TRACKED_SOURCES:
                self._askers.clear()
            self._askers[host] = who
        return who

    def _admit(self, host: str) -> Asker | None:
        """Who asks from `host`, or None: drop the query unread (a stranger, or a member past its rate)."""
        who = self._asker(host)
        if who is Asker.STRANGER:
            self.stats.strangers += 1
            return None
        if who is Asker.MEMBER and not self._buckets.take(host, self._clock):
            self.stats.rate_limited += 1
            return None
        return who

    def _on_udp_readable(self, sock: socket.socket) -> None:
        # Drain a batch per wakeup instead of one datagram per event-loop turn (what
        # asyncio's datagram transport does): several times the throughput under load.
        self._clock = asyncio.get_running_loop().time()
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(resolver.MAX_QUERY_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                log.debug("DNS UDP receive error: %r", exc)
                return
            self._handle_udp(data, addr, sock)

    def _handle_udp(self, data: bytes, addr: tuple[str, int], sock: socket.socket) -> None:
        self.stats.queries += 1
        who = self._admit(addr[0])
        if who is None:
            return
        reply = resolver.answer(data, self._zone, asker=who, forward=bool(self._upstreams))
        if reply.action is Action.REPLY:
            self.stats.answered += 1
            _send(sock, reply.data, addr)
        elif reply.action is Action.FORWARD:
            if self._forwards >= self._max_forwards:  # full: answer now, spawn nothing
                self.stats.servfail += 1
                _send(sock, resolver.error_reply(data, resolver.RCODE_SERVFAIL) or b"", addr)
                return
            self._forwards += 1  # the slot is taken before the task exists
            self._spawn(self._forward_udp(data, addr, sock))
        else:
            self.stats.dropped += 1
            log.debug("dropped query from %s: %s", addr[0], reply.reason)

    async def _forward_udp(self, query: bytes, addr: tuple[str, int], sock: socket.socket) -> None:
        try:
            reply = await self._forward_in_slot(query)
        finally:
            self._forwards -= 1
        if sock.fileno() >= 0:  # not closed by stop() meanwhile
            _send(sock, resolver.fit_udp(reply, query), addr)

    # -- TCP (RFC 7766: two-byte length prefix, several queries per connection) -------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if len(self._tcp_writers) >= MAX_TCP_CLIENTS or self._asker(host) is Asker.STRANGER:
            writer.close()
            return
        self._tcp_writers.add(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT_S)
                    (length,) = struct.unpack("!H", head)
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                self.stats.queries += 1
                self._clock = asyncio.get_running_loop().time()
                who = self._admit(host)
                if who is None:
                    return  # a stranger, or a member past its rate: hung up on
                reply = resolver.answer(data, self._zone, asker=who, forward=bool(self._upstreams), tcp=True)
                if reply.action is Action.DROP:
                    self.stats.dropped += 1
                    return  # a client sending garbage over TCP gets hung up on
                if reply.action is Action.FORWARD:
                    out = await self._forward_tcp(data)
                else:
                    self.stats.answered += 1
                    out = reply.data
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_writers.discard(writer)
            writer.close()

    # -- forwarding -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_tcp(self, query: bytes) -> bytes:
        if self._forwards >= self._max_forwards:
            self.stats.servfail += 1
            return resolver.error_reply(query, resolver.RCODE_SERVFAIL) or b""
        self._forwards += 1
        try:
            return await self._forward_in_slot(query)
        finally:
            self._forwards -= 1

    async def _forward_in_slot(self, query: bytes) -> bytes:
        """The upstream's reply with the client's ID, or SERVFAIL; never raises.
        The caller holds one of the `max_forwards` slots."""
        self.stats.forwarded += 1
        client_id = struct.unpack_from("!H", query)[0]
        for upstream in self._upstreams:
            sent = resolver.with_id(query, self._rng.getrandbits(16))
            try:
                reply = await asyncio.wait_for(_query_udp(upstream, sent), self._forward_timeout_s)
                if resolver.is_truncated(reply):
                    reply = await asyncio.wait_for(_query_tcp(upstream, sent), self._forward_timeout_s)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s:%d failed: %r", upstream[0], upstream[1], exc)
                continue
            if resolver.is_reply_to(sent, reply):
                return resolver.with_id(reply, client_id)
        self.stats.servfail += 1
        return resolver.error_reply(query, resolver.RCODE_SERVFAIL) or b""


def _send(sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
    """Best effort, like any UDP server: a full send buffer drops the reply, the client retries."""
    try:
        sock.sendto(data, addr)
    except OSError as exc:
        log.debug("DNS reply to %s not sent: %r", addr[0], exc)


class _UpstreamUdp(asyncio.DatagramProtocol):
    """One query to one upstream: waits for the first datagram that answers it."""

    def __init__(self, sent: bytes) -> None:
        self.sent = sent
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Only a reply to our ID and question counts (forged or stray datagrams are skipped).
        if self.reply.done():
            return
        if resolver.is_reply_to(self.sent, data) or resolver.is_truncation_of(self.sent, data):
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _query_udp(upstream: Endpoint, sent: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _UpstreamUdp(sent), remote_addr=upstream)
    try:
        transport.sendto(sent)
        return await protocol.reply
    finally:
        transport.close()


async def _query_tcp(upstream: Endpoint, sent: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
    try:
        writer.write(struct.pack("!H", len(sent)) + sent)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()


def _bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
