"""`meshctl relay`: the user-run relay (asyncio shell around server_core.RelayCore).

- UDP on --listen: relay frames and STUN binding requests on one socket, read in batches.
- TCP on the same port: the fallback for networks that block UDP (TLS with --tls-cert/--tls-key);
  frames back to back, each framed by its own length field.
- Channels (channels.py, channel_io.py): a port pair per relayed pair of members that their
  WireGuard uses directly, forwarded in batches; frames remain for disco, for members on TCP
  and until a channel is ready. `--channel-ports LO-HI` confines them to a range (firewalls).
- Membership: the coordination repository, synced and verified every `sync_interval_s` in a
  worker thread; a revoked member's sessions are dropped by the sync that sees the revocation,
  and their channels closed with them.
- Metrics: Prometheus text on --metrics (GET /metrics; the text is metrics.py's).

The relay never decrypts: payloads are WireGuard or sealed disco packets, forwarded by the
destination WireGuard key. It logs connects and disconnects, never packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshctl.coord.netmap import NetMap
from meshctl.errors import MeshctlError
from meshctl.keys import SigningKey, VerifyKey, load_signing_key, write_private_key
from meshctl.nat import stun
from meshctl.nat.addr import AddrPort, addr_port
from meshctl.relay.channel_io import ChannelPorts
from meshctl.relay.metrics import Gauges, metrics_text
from meshctl.relay.server_core import ClientAdmitted, ClientDropped, ConnId, Limits, RelayCore
from meshctl.relay.sync import cached_netmap, listing_problem, members_of, sync_once
from meshctl.relay.wire import FrameDecoder, RelayParseError, looks_like_frame
from meshctl.udp import sockets

log = logging.getLogger(__name__)

DEFAULT_SYNC_INTERVAL_S: Final = 60.0
TIMER_TICK_S: Final = 1.0
# A TCP client that has not logged in after this long is hung up (a slow-loris bound).
TCP_LOGIN_TIMEOUT_S: Final = 10.0
# Bytes queued towards one TCP client before its packets are dropped (bounded queue).
TCP_QUEUE_BYTES: Final = 2 * 1024 * 1024
MAX_TCP_CONNECTIONS: Final = 20_000
METRICS_REQUEST_BYTES: Final = 8192
METRICS_TIMEOUT_S: Final = 5.0
IDENTITY_KEY_FILE: Final = "relay.key"
# Each logged-in UDP client gets its own connected socket on the relay port, so its datagrams
# queue apart from everyone else's: a flood fills only the flooder's queue. Reads take at most
# this many datagrams per socket and wake-up (round robin between clients).
CLIENT_BATCH: Final = 32
# A client socket's receive buffer: a few ms of line rate is enough once queues are per client.
CLIENT_BUFFER_BYTES: Final = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RelayConfig:
    listen: str  # "ADDR:PORT" (UDP and TCP)
    repo_url: str
    root_fingerprint: str
    state_dir: Path
    name: str = "relay"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics: str | None = None  # "ADDR:PORT"
    sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S
    limits: Limits = Limits()
    channels: bool = True  # offer channels (a port pair per relayed pair of members)
    channel_ports: tuple[int, int] | None = None  # a port range for them; None: any free port


def load_or_create_identity(state_dir: Path) -> SigningKey:
    path = state_dir / IDENTITY_KEY_FILE
    if path.exists():
        return load_signing_key(path)
    key = SigningKey.generate()
    write_private_key(path, key)
    return key


class _StreamConn(asyncio.Protocol):
    """One TCP/TLS client; its ConnId is the object itself."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.peer = "?"
        self.timeout: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.server.streams) >= MAX_TCP_CONNECTIONS:
            transport.abort()
            return
        self.server.streams.add(self)
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = asyncio.get_running_loop().call_later(TCP_LOGIN_TIMEOUT_S, self._login_deadline)

    def _login_deadline(self) -> None:
        if self.server.core.session_of(self) is None and self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except RelayParseError as exc:
            self.server.core.stats.drop("bad_stream")
            log.debug("tcp %s: %s; closing", self.peer, exc)
            if self.transport is not None:
                self.transport.abort()
            return
        now = time.monotonic()
        for frame in frames:
            self.server.core.receive(self, frame, now)
        self.server.flush()

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > TCP_QUEUE_BYTES:
            self.server.core.stats.drop("queue_full")
            return
        t.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timeout is not None:
            self.timeout.cancel()
        self.server.streams.discard(self)
        self.server.core.connection_lost(self)
        self.server.flush()

    def __repr__(self) -> str:
        return f"tcp:{self.peer}#{id(self):x}"


class RelayServer:
    """Sockets, timers and the sync loop around one RelayCore."""

    def __init__(self, config: RelayConfig, identity: SigningKey | None = None,
                 sync: Callable[[int], NetMap] | None = None) -> None:
        self.config = config
        self.identity = identity
        self._host = sockets.split_host_port(config.listen)[0]
        self.ports = ChannelPorts(self._host, self.flush, config.channel_ports)
        self.core = RelayCore(config.name, os.urandom(32), os.urandom, identity, config.limits,
                              ports=self.ports if config.channels else None)
        self.ports.attach(self.core)
        self._sync = sync or (lambda now: sync_once(config.state_dir, config.repo_url,
                                                    config.root_fingerprint, now))
        self.netmap: NetMap | None = None
        self._names: dict[VerifyKey, str] = {}
        self.streams: set[_StreamConn] = set()
        self._udp: socket.socket | None = None
        self._client_socks: dict[tuple[str, int], socket.socket] = {}
        self._tcp: asyncio.Server | None = None
        self._metrics: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.udp_addr: tuple[str, int] | None = None
        self.tcp_addr: tuple[str, int] | None = None
        self.metrics_addr: tuple[str, int] | None = None
        self.last_sync_error: str | None = None
        self.listing_problem: str | None = None  # why members will not use this relay (sync.listing_problem)
        self.synced = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self._first_sync()
        host, port = sockets.split_host_port(self.config.listen)
        sockets.raise_fd_limit()  # up to four sockets per channel, one per UDP client
        self._udp = sockets.udp_socket(host, port, reuse_port=True)
        self.udp_addr = self._udp.getsockname()[:2]
        loop.add_reader(self._udp.fileno(), self._on_udp_readable, self._udp, sockets.RECV_BATCH)
        ctx = self._tls_context()
        self._tcp = await loop.create_server(lambda: _StreamConn(self), host, self.udp_addr[1], ssl=ctx,
                                             reuse_address=True)
        self.tcp_addr = self._tcp.sockets[0].getsockname()[:2]
        if self.config.metrics:
            mhost, mport = sockets.split_host_port(self.config.metrics)
            self._metrics = await asyncio.start_server(self._serve_metrics, mhost, mport)
            self.metrics_addr = self._metrics.sockets[0].getsockname()[:2]
        self._tasks = [asyncio.create_task(self._sync_loop()), asyncio.create_task(self._tick_loop())]
        log.info("relay %s listening on udp+%s %s:%d%s", self.config.name, "tls" if ctx else "tcp",
                 self.udp_addr[0], self.udp_addr[1],
                 f", metrics on {self.metrics_addr[0]}:{self.metrics_addr[1]}" if self.metrics_addr else "")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for addr in list(self._client_socks):
            self._close_client_socket(addr)
        self.ports.close_all()
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        for server in (self._tcp, self._metrics):
            if server is not None:
                server.close()
        for conn in list(self.streams):
            if conn.transport is not None:
                conn.transport.abort()
        for server in (self._tcp, self._metrics):
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    def _tls_context(self) -> ssl.SSLContext | None:
        cert, key = self.config.tls_cert, self.config.tls_key
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise MeshctlError("--tls-cert and --tls-key go together")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise MeshctlError(f"{cert}: cannot load the TLS certificate and key ({exc})") from None
        return ctx

    # -- membership --------------------------------------------------------------------

    async def _first_sync(self) -> None:
        try:
            nm = await asyncio.to_thread(self._sync, int(time.time()))
        except MeshctlError as exc:
            cached = cached_netmap(self.config.state_dir, int(time.time()))
            if cached is None:
                raise
            log.warning("coordination sync failed (%s); using the last accepted state, serial %d",
                        exc.message, cached.serial)
            self.last_sync_error = exc.message
            nm = cached
        self.apply_netmap(nm)

    def apply_netmap(self, nm: NetMap) -> None:
        old = self.netmap.serial if self.netmap else None
        self.netmap = nm
        mono = time.monotonic()
        # The state's expiry, moved to the monotonic clock the core runs on: past it, no new logins.
        self.core.set_members(nm.network.network_id, members_of(nm), mono, mono + (nm.expires - time.time()))
        self.flush()  # log the drops under the names they had
        self._names = {p.identity_key: p.name for p in nm.peers}
        self.synced.set()
        if old != nm.serial:
            log.info("coordination state serial %d: %d members", nm.serial, len(nm.peers))
        problem = listing_problem(nm.relays, self.config.name,
                                  self.identity.public() if self.identity is not None else None)
        if problem != self.listing_problem and problem is not None:
            log.warning("%s", problem)
        self.listing_problem = problem

    async def sync_now(self) -> None:
        try:
            nm = await asyncio.to_thread(self._sync, int(time.time()))
        except MeshctlError as exc:
            if exc.message != self.last_sync_error:
                log.warning("coordination sync failed: %s (keeping serial %s)", exc.message,
                            self.netmap.serial if self.netmap else "none")
            self.last_sync_error = exc.message
            return
        self.last_sync_error = None
        self.apply_netmap(nm)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_interval_s)
            await self.sync_now()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TIMER_TICK_S)
            self.core.handle_timer(time.monotonic())
            self.flush()

    # -- data path ---------------------------------------------------------------------

    def _open_client_socket(self, conn: tuple[str, int]) -> None:
        if self._udp is None or conn in self._client_socks or self.udp_addr is None:
            return
        try:
            sock = sockets.udp_socket(self._host, self.udp_addr[1], CLIENT_BUFFER_BYTES, reuse_port=True,
                                      connect=conn)
        except OSError as exc:  # out of fds, say: the shared socket still carries this client
            log.debug("no own socket for %s: %s", conn, exc)
            return
        self._client_socks[conn] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_udp_readable, sock, CLIENT_BATCH)

    def _close_client_socket(self, conn: tuple[str, int]) -> None:
        sock = self._client_socks.pop(conn, None)
        if sock is not None:
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _on_udp_readable(self, sock: socket.socket, batch: int) -> None:
        if self._udp is None:
            return
        core = self.core
        now = time.monotonic()
        recv = sock.recvfrom
        for _ in range(batch):
            try:
                data, addr = recv(sockets.RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP errors surface here; they concern one peer, not the socket
                continue
            if looks_like_frame(data):
                core.receive((addr[0], addr[1]), data, now)
            elif stun.is_stun(data):
                core.receive_stun((addr[0], addr[1]), data, now)
            else:
                core.stats.drop("not_relay")
        self.flush()

    def flush(self) -> None:
        """Drain the core's output queue: frames to their connections, in order; session events
        logged, client sockets opened and closed, dropped streams hung up."""
        core = self.core
        out = core.take_output()
        if not out:
            return
        udp = self._udp
        for item in out:
            if type(item) is tuple:
                dst, frame = item
                if type(dst) is tuple:
                    if udp is None:
                        continue
                    try:
                        udp.sendto(frame, dst)
                    except (BlockingIOError, InterruptedError):
                        core.stats.drop("send_buffer_full")
                    except OSError:
                        core.stats.drop("send_error")
                elif isinstance(dst, _StreamConn):
                    dst.write(frame)
            elif isinstance(item, ClientAdmitted):
                if type(item.conn) is tuple:
                    self._open_client_socket(item.conn)
                log.info("connected: %s (%s) from %s", self._names.get(item.identity, "?"), item.wg_key.short(),
                         _conn_text(item.conn))
            elif isinstance(item, ClientDropped):
                if type(item.conn) is tuple:
                    self._close_client_socket(item.conn)
                elif item.hang_up and isinstance(item.conn, _StreamConn):
                    item.conn.close()
                log.info("disconnected: %s (%s) from %s: %s", self._names.get(item.identity, "?"),
                         item.wg_key.short(), _conn_text(item.conn), item.reason)

    # -- metrics -----------------------------------------------------------------------

    def metrics_text(self) -> str:
        gauges = Gauges(udp_client_sockets=len(self._client_socks), tcp_connections=len(self.streams),
                        serial=self.netmap.serial if self.netmap else 0)
        return metrics_text(self.core, gauges)

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), METRICS_TIMEOUT_S)
            parts = head[:METRICS_REQUEST_BYTES].split(b" ", 2)
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] in (b"/metrics", b"/"):
                status, body = "200 OK", self.metrics_text().encode()
            else:
                status, body = "404 Not Found", b"not found\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()


def _conn_text(conn: ConnId) -> str:
    if type(conn) is tuple:
        return f"udp {AddrPort(*addr_port(conn[0], conn[1]))}"
    return repr(conn)


async def run_relay(config: RelayConfig, on_ready: Callable[[RelayServer], None] | None = None) -> None:
    """The `meshctl relay` main loop (until cancelled)."""
    identity = load_or_create_identity(config.state_dir)
    server = RelayServer(config, identity)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
