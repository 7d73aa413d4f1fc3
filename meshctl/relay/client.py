"""The relay client: log in to one relay over UDP (TCP/TLS fallback), keep the session alive,
reconnect with backoff, measure latency, send and receive opaque packets (asyncio shell
around client_core.ClientSession).

    client = RelayClient(RelayClientConfig("198.51.100.7:3340", network_id, relay_name="home"),
                         identity_key, wg_public_key, on_packet=lambda src, data: ...)
    await client.start()
    client.send(peer_wg_key, packet)      # False when not connected (the caller drops)
    client.request_channel(peer_wg_key)   # answered in client.channels and on_channel (channels.py)
    await client.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from meshctl.keys import NodePublic, SigningKey, VerifyKey
from meshctl.relay.channels import ChannelState
from meshctl.relay.client_core import (
    ChannelChanged,
    ClientSession,
    Connected,
    ConnectionLost,
    NotTheListedRelay,
    PacketReceived,
    PongReceived,
    Refused,
)
from meshctl.relay.wire import ChannelInfo, DenyReason, FrameDecoder, RelayParseError
from meshctl.udp import sockets

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S: Final = 0.25
# Small: a relay that restarts must be found again within a few seconds, and a hello is tiny.
RECONNECT_MAX_S: Final = 4.0
# Refused logins (not a member yet, revoked) are retried ever more slowly: the relay must see a
# newer state first. The first retries come soon, because a device that was just approved often
# logs in before the relay's own next sync has admitted it.
REFUSED_RETRY_FIRST_S: Final = 2.0
REFUSED_RETRY_S: Final = 30.0
TCP_CONNECT_TIMEOUT_S: Final = 5.0
# A session shorter than this does not reset the backoff (a relay that accepts and drops at
# once must not be hammered).
STABLE_SESSION_S: Final = 10.0
# Another relay becomes home only if it is this much faster (no flapping between equals).
HOME_HYSTERESIS_S: Final = 0.010
TCP_QUEUE_BYTES: Final = 2 * 1024 * 1024
TCP_READ_BYTES: Final = 256 * 1024
TRANSPORTS: Final = ("udp", "tcp")
MAX_CACHED_KEYS: Final = 4096  # source keys seen; cleared when full (only members get through)


@dataclass(frozen=True, slots=True)
class RelayClientConfig:
    address: str  # "host:port" of the relay (UDP; the TCP fallback uses the same port)
    network_id: str  # signed into the login, so it cannot be replayed into another mesh
    relay_name: str | None = None  # the name from state.json; a challenge naming another relay is ignored
    relay_key: VerifyKey | None = None  # when set, the relay must prove it holds this key
    transports: tuple[str, ...] = TRANSPORTS  # in order of preference
    tls: ssl.SSLContext | None = None  # TLS for the TCP fallback (None: plain TCP)
    tls_server_name: str | None = None


def refused_delay(refusals: int) -> float:
    """Seconds before the next login after `refusals` refusals in a row: 2 s doubling to 30 s."""
    return min(REFUSED_RETRY_S, REFUSED_RETRY_FIRST_S * 2.0 ** max(0, refusals - 1))


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: 0 for the first retry, then 0.25 s doubling to 4 s."""
    if attempt <= 0:
        return 0.0
    base = min(RECONNECT_MAX_S, RECONNECT_INITIAL_S * 2 ** (attempt - 1))
    return float(base * (0.5 + 0.5 * rand()))


class _Link:
    """One transport connection carrying one ClientSession."""

    kind = "?"

    def __init__(self, client: RelayClient, session: ClientSession) -> None:
        self.client = client
        self.session = session
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def write(self, frame: bytes) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def pump(self) -> None:
        """Send what the session queued, handle its events, re-arm the one timer."""
        sess = self.session
        for frame in sess.data_to_send():
            self.write(frame)
        for ev in sess.events():
            self.client.handle_event(self, ev)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = sess.next_deadline()
        if deadline is not None and not self.done.done():
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(time.monotonic())
        self.pump()

    def finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


class _UdpLink(_Link):
    kind = "udp"

    def __init__(self, client: RelayClient, session: ClientSession, sock: socket.socket) -> None:
        super().__init__(client, session)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def write(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
            return True
        except (BlockingIOError, InterruptedError):
            self.client.drops += 1
            return False
        except OSError:  # e.g. ECONNREFUSED from an earlier ICMP: the relay is down right now
            return False

    def _on_readable(self) -> None:
        now = time.monotonic()
        sess = self.session
        recv = self.sock.recv
        take = sess.take_packet
        deliver = self.client.deliver_raw
        slow = False
        for _ in range(sockets.RECV_BATCH):
            try:
                data = recv(sockets.RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP port unreachable while the relay restarts
            packet = take(data, now)
            if packet is not None:
                deliver(packet[0], packet[1])
            else:
                sess.receive_frame(data, now)
                slow = True
        if slow:  # only control frames change the session's timers or produce events
            self.pump()

    def close(self) -> None:
        super().close()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class _TcpLink(_Link, asyncio.Protocol):
    kind = "tcp"

    def __init__(self, client: RelayClient, session: ClientSession) -> None:
        _Link.__init__(self, client, session)
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except RelayParseError:
            self.finish("garbage from the relay")
            return
        now = time.monotonic()
        sess = self.session
        slow = False
        for frame in frames:
            packet = sess.take_packet(frame, now)
            if packet is not None:
                self.client.deliver_raw(packet[0], packet[1])
            else:
                sess.receive_frame(frame, now)
                slow = True
        if slow:
            self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("connection closed")

    def write(self, frame: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        if t.get_write_buffer_size() > TCP_QUEUE_BYTES:
            self.client.drops += 1
            return False
        t.write(frame)
        return True

    def close(self) -> None:
        _Link.close(self)
        if self.transport is not None:
            self.transport.close()


class RelayClient:
    """A long-lived connection to one relay; survives relay restarts and network changes."""

    def __init__(self, config: RelayClientConfig, identity: SigningKey, wg_key: NodePublic,
                 on_packet: Callable[[NodePublic, bytes], None],
                 on_state: Callable[[bool], None] | None = None,
                 on_channel: Callable[[ChannelInfo], None] | None = None) -> None:
        self.config = config
        self._identity = identity
        self.wg_key = wg_key
        self.on_packet = on_packet
        self.on_state = on_state
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.transport: str | None = None  # "udp" | "tcp" while connected
        self.latency_s: float | None = None  # last measured round trip to the relay
        self.relay_verified = False
        self.last_error: str | None = None
        self.connects = 0
        self.drops = 0
        self._refused = False
        self._handshake_started = 0.0
        self._keys: dict[bytes, NodePublic] = {}
        self.on_channel = on_channel
        self.channels: dict[bytes, ChannelInfo] = {}  # peer key -> its offered or ready channel
        self.relay_ip: str | None = None  # the relay's address this session reached (channels live there)
        self._not_listed: str | None = None  # this attempt's relay is not the one the state lists: why
        self._told: str | None = None  # the last problem logged (each is logged once until it changes)

    # -- public API --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"relay-client {self.config.address}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_disconnected()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def send(self, dst: NodePublic, payload: bytes) -> bool:
        """Hand one packet to the relay for `dst`; False if not connected or the queue is full."""
        link = self._link
        if link is None:
            return False
        frame = link.session.send_packet(dst, payload)
        if frame is None:
            return False
        return link.write(frame)

    def request_channel(self, peer: NodePublic) -> bool:
        """Ask the relay for a channel to `peer`; the answer arrives in `channels`/on_channel."""
        link = self._link
        if link is None or not link.session.request_channel(peer):
            return False
        link.pump()
        return True

    def channel_endpoint(self, peer: NodePublic) -> str | None:
        """WireGuard's endpoint for `peer` once its channel is READY: RELAY_IP:PORT. IPv4 only:
        the bind leaves from WireGuard's port through meshctl's raw IPv4 socket."""
        info = self.channels.get(peer.raw)
        ip = self.relay_ip
        if info is None or info.state is not ChannelState.READY or ip is None or ":" in ip:
            return None
        return f"{ip}:{info.port}"

    def deliver_raw(self, src_raw: bytes, payload: bytes) -> None:
        """A relayed packet from the fast path: reuse key objects (hashing them is not free)."""
        src = self._keys.get(src_raw)
        if src is None:
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            src = self._keys[src_raw] = NodePublic(src_raw)
        try:
            self.on_packet(src, payload)
        except Exception:  # a bug in the consumer must not kill the relay connection
            log.exception("unexpected: relay packet handler failed")

    def status(self) -> dict[str, object]:
        return {"address": self.config.address, "name": self.config.relay_name, "connected": self.connected,
                "transport": self.transport, "latency_ms": None if self.latency_s is None
                else round(self.latency_s * 1000, 2), "verified": self.relay_verified,
                "last_error": self.last_error}

    # -- supervision -------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = refusals = 0
        while True:
            for kind in self.config.transports:
                self._refused = False
                started = time.monotonic()
                try:
                    reached = await self._run_once(kind)
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    self.last_error = f"{kind}: {exc.__class__.__name__}: {exc}"
                    log.debug("relay %s over %s: %s", self.config.address, kind, self.last_error)
                    reached = False
                if reached:
                    # A session that worked and ended: start again from the preferred transport,
                    # at once if it had lasted (the relay restarted), else with growing backoff.
                    attempt = 0 if time.monotonic() - started >= STABLE_SESSION_S else attempt + 1
                    break
                if self._refused:
                    break
            else:
                attempt += 1
            refusals = refusals + 1 if self._refused else 0
            delay = refused_delay(refusals) if self._refused else backoff_delay(attempt)
            await asyncio.sleep(delay)

    async def _run_once(self, kind: str) -> bool:
        loop = asyncio.get_running_loop()
        host, port = sockets.split_host_port(self.config.address)
        session = ClientSession(self._identity, self.wg_key, self.config.network_id, os.urandom,
                                self.config.relay_name, self.config.relay_key)
        link: _Link
        if kind == "udp":
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            self.relay_ip = str(addr[0])
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sockets.set_buffers(sock)
                sock.connect(addr)
            except BaseException:
                sock.close()
                raise
            link = _UdpLink(self, session, sock)
        elif kind == "tcp":
            tcp = _TcpLink(self, session)
            server_name = (self.config.tls_server_name or host) if self.config.tls else None
            await asyncio.wait_for(loop.create_connection(lambda: tcp, host, port, ssl=self.config.tls,
                                                          server_hostname=server_name),
                                   TCP_CONNECT_TIMEOUT_S)
            if tcp.transport is not None:
                with contextlib.suppress(OSError):
                    tcp.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = tcp.transport.get_extra_info("peername")
                self.relay_ip = str(peer[0]) if peer else None
            link = tcp
        else:
            raise ValueError(f"unknown relay transport {kind!r}")
        self._link = link
        self._not_listed = None
        try:
            self._handshake_started = time.monotonic()
            session.connect(self._handshake_started)
            link.pump()
            reason = await link.done
            # "not the listed relay" explains a timeout better than the timeout does
            self.last_error = self._not_listed or f"{kind}: {reason}"
        finally:
            reached = self.transport is not None
            self._link = None
            session.close()  # says goodbye to the relay if still logged in
            for frame in session.data_to_send():
                link.write(frame)
            link.close()
            if reached:
                log.info("relay %s: disconnected (%s)", self.config.address, self.last_error)
            self._set_disconnected()
        return reached

    def handle_event(self, link: _Link, ev: object) -> None:
        if isinstance(ev, PacketReceived):
            try:
                self.on_packet(ev.src, ev.payload)
            except Exception:  # a bug in the consumer must not kill the relay connection
                log.exception("unexpected: relay packet handler failed")
        elif isinstance(ev, PongReceived):
            self.latency_s = ev.rtt_s
        elif isinstance(ev, Connected):
            # Hello, challenge, response, welcome: two round trips.
            self.latency_s = (time.monotonic() - self._handshake_started) / 2
            self.transport = link.kind
            self.relay_verified = ev.relay_verified
            self.connects += 1
            self.last_error = self._told = None
            self._connected.set()
            log.info("relay %s: connected over %s (%.1f ms)", self.config.address, link.kind,
                     self.latency_s * 1000)
            if self.on_state is not None:
                self.on_state(True)
        elif isinstance(ev, Refused):
            self._refused = ev.reason in (DenyReason.AUTH_FAILED, DenyReason.REVOKED)
            msg = f"refused: {ev.reason.name.lower()}"
            if ev.reason is DenyReason.AUTH_FAILED:
                log.warning("relay %s refused this device (not a member of the verified mesh?)",
                            self.config.address)
            link.finish(msg)
        elif isinstance(ev, ConnectionLost):
            link.finish(ev.reason)
        elif isinstance(ev, NotTheListedRelay):
            self._not_listed = self.last_error = ev.reason
            if ev.reason != self._told:
                self._told = ev.reason
                log.warning("relay %s: %s", self.config.relay_name or self.config.address, ev.reason)
        elif isinstance(ev, ChannelChanged):
            info = ev.info
            if info.state is ChannelState.CLOSED:
                self.channels.pop(info.peer.raw, None)
            else:
                self.channels[info.peer.raw] = info
            if self.on_channel is not None:
                try:
                    self.on_channel(info)
                except Exception:  # a bug in the consumer must not kill the relay connection
                    log.exception("unexpected: relay channel handler failed")

    def _set_disconnected(self) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self.transport = None
        self.channels.clear()  # they live as long as the session
        if was and self.on_state is not None:
            self.on_state(False)


def choose_home(clients: Sequence[RelayClient], current: RelayClient | None = None) -> RelayClient | None:
    """The home relay: the connected client with the lowest latency. `current` stays home while
    it is connected unless another is faster by more than HOME_HYSTERESIS_S."""
    live = [c for c in clients if c.connected and c.latency_s is not None]
    if not live:
        return None
    best = min(live, key=lambda c: c.latency_s or 0.0)
    if current is not None and current in live and current.latency_s is not None and best.latency_s is not None:
        if current.latency_s - best.latency_s <= HOME_HYSTERESIS_S:
            return current
    return best
