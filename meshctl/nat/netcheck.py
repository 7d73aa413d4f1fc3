"""Netcheck: what the network looks like from here, learned from STUN replies.

The core (`Netcheck`) is sans-IO: it says which Binding requests to send when,
takes the replies with the time they arrived, and builds a `NetcheckReport`. It
never owns a socket, because the agent must send from WireGuard's port (through
rawsock.SharedPortSocket) for the mapping to mean anything; the CLI without an
agent uses `standalone()`, which sends from a plain UDP socket.

Shells at the bottom: `resolve_servers`, `run`, `standalone`, `from_shared_port`.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from meshctl.errors import ParseError
from meshctl.nat import stun
from meshctl.nat.addr import AddrPort, addr_port, split_host_port

if TYPE_CHECKING:
    from meshctl.nat.rawsock import SharedPortSocket

log = logging.getLogger(__name__)

# Offsets (s) of the attempts to each server: a lost request or reply is retried
# twice, and an answered server is not asked again.
PROBE_OFFSETS_S: Final = (0.0, 0.5, 1.2)
DEFAULT_TIMEOUT_S: Final = 3.0
MAX_SERVERS: Final = 16  # bounds the plan, whatever the config says

# Used when the node has no verified state yet and no --stun was given.
DEFAULT_STUN_SERVERS: Final = (
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
)


@dataclass(frozen=True, slots=True)
class StunServer:
    """A STUN server as configured (`name`, e.g. "host:port") and its resolved address."""

    name: str
    addr: AddrPort


@dataclass(frozen=True, slots=True)
class Probe:
    """One planned Binding request: to `server`, `at` seconds after the start."""

    server: StunServer
    txid: bytes
    at: float


@dataclass(frozen=True, slots=True)
class ServerResult:
    """What one server told us. `addr` is None when its name did not resolve."""

    server: str
    addr: AddrPort | None
    mapped: AddrPort | None = None  # our address as this server saw it
    latency_s: float | None = None  # request to reply, of the attempt that was answered
    error: str | None = None


@dataclass(frozen=True, slots=True)
class NetcheckReport:
    udp: bool  # at least one STUN server answered over UDP
    servers: tuple[ServerResult, ...]
    # True when servers saw different mappings (a symmetric NAT: direct paths need the
    # peer to have an easy NAT); None when fewer than two servers answered.
    mapping_varies_by_dest: bool | None
    preferred_endpoint: AddrPort | None  # the mapping most servers agree on

    def to_json(self) -> dict[str, object]:
        return {
            "udp": self.udp,
            "mapping_varies_by_dest": self.mapping_varies_by_dest,
            "preferred_endpoint": str(self.preferred_endpoint) if self.preferred_endpoint else None,
            "servers": [
                {
                    "server": s.server,
                    "address": str(s.addr) if s.addr else None,
                    "mapped": str(s.mapped) if s.mapped else None,
                    "latency_ms": round(s.latency_s * 1000, 3) if s.latency_s is not None else None,
                    "error": s.error,
                }
                for s in self.servers
            ],
        }


def make_probe_plan(
    servers: Sequence[StunServer],
    randbytes: Callable[[int], bytes],
    offsets: Sequence[float] = PROBE_OFFSETS_S,
) -> tuple[Probe, ...]:
    """Every attempt to every server, sorted by time; each has its own txid."""
    plan = [
        Probe(server, stun.new_txid(randbytes), at)
        for at in offsets
        for server in servers[:MAX_SERVERS]
    ]
    return tuple(sorted(plan, key=lambda p: p.at))


def build_report(
    servers: Sequence[StunServer],
    answers: dict[str, tuple[AddrPort, float]],
    unresolved: Iterable[tuple[str, str]] = (),
) -> NetcheckReport:
    """Pure summary of the answers: server name -> (mapped, latency)."""
    results = [
        ServerResult(s.name, s.addr, *answers[s.name]) if s.name in answers
        else ServerResult(s.name, s.addr, error="no reply")
        for s in servers
    ]
    results += [ServerResult(name, None, error=why) for name, why in unresolved]
    mapped = [answers[s.name] for s in servers if s.name in answers]
    varies = len({m for m, _ in mapped}) > 1 if len(mapped) >= 2 else None
    preferred = None
    if mapped:
        counts = Counter(m for m, _ in mapped)
        # most servers agree; ties go to the fastest server's view
        preferred = min(mapped, key=lambda ml: (-counts[ml[0]], ml[1]))[0]
    return NetcheckReport(bool(mapped), tuple(results), varies, preferred)


class Netcheck:
    """One netcheck run (sans-IO): send what `datagrams_to_send` returns, feed replies in."""

    def __init__(
        self,
        servers: Sequence[StunServer],
        now: float,
        randbytes: Callable[[int], bytes],
        timeout: float = DEFAULT_TIMEOUT_S,
        unresolved: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._servers = tuple(servers[:MAX_SERVERS])
        self._start = now
        self._end = now + timeout
        self._plan = list(make_probe_plan(self._servers, randbytes))
        self._unresolved = tuple(unresolved)
        self._sent: dict[bytes, tuple[StunServer, float]] = {}  # txid -> (server, sent at)
        self._answers: dict[str, tuple[AddrPort, float]] = {}

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, AddrPort]]:
        out: list[tuple[bytes, AddrPort]] = []
        while self._plan and self._start + self._plan[0].at <= now and now < self._end:
            probe = self._plan.pop(0)
            if probe.server.name in self._answers:
                continue
            self._sent[probe.txid] = (probe.server, now)
            out.append((stun.marshal_binding_request(probe.txid), probe.server.addr))
        return out

    def receive_stun(self, data: bytes, src: AddrPort, now: float) -> bool:
        """Feed a packet; True if it answered one of our requests (others are ignored)."""
        try:
            txid, mapped = stun.parse_binding_response(data)
        except stun.StunError as exc:
            log.debug("ignored packet from %s: %s", src, exc)
            return False
        sent = self._sent.get(txid)
        if sent is None:
            return False
        server, sent_at = sent
        if src != server.addr:
            # Our transaction id, from elsewhere: someone who saw the request answers for the
            # server (an off-path sender cannot know the 96-bit id). Only the server's own
            # address counts; what a forger there can still do is SECURITY.md's to bound.
            log.debug("ignored a STUN answer for %s from %s", server.name, src)
            return False
        if server.name not in self._answers:
            self._answers[server.name] = (mapped, max(0.0, now - sent_at))
        return True

    def handle_timer(self, now: float) -> None:
        """Nothing to do beyond what datagrams_to_send and done compute from `now`."""

    def next_deadline(self) -> float | None:
        if len(self._answers) == len(self._servers):
            return None
        pending = [self._start + p.at for p in self._plan if p.server.name not in self._answers]
        return min([*pending, self._end])

    def done(self, now: float) -> bool:
        return now >= self._end or len(self._answers) == len(self._servers)

    def report(self) -> NetcheckReport:
        return build_report(self._servers, self._answers, self._unresolved)


# --- shells --------------------------------------------------------------------------------


class Transport(Protocol):
    """What `run` needs: a way to send, and to wait for the next datagram."""

    def send(self, payload: bytes, dst: AddrPort) -> None: ...

    def recv_wait(self, timeout: float) -> tuple[bytes, AddrPort] | None: ...


def resolve_servers(specs: Iterable[str]) -> tuple[list[StunServer], list[tuple[str, str]]]:
    """Resolve "host:port" specs to IPv4 (raw sockets are IPv4): (resolved, [(spec, why)]).

    A malformed spec is a usage error; a name that does not resolve is reported.
    """
    resolved: list[StunServer] = []
    failed: list[tuple[str, str]] = []
    for spec in specs:
        host, port = split_host_port(spec)
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            failed.append((spec, f"cannot resolve: {exc}"))
            continue
        resolved.append(StunServer(spec, addr_port(str(infos[0][4][0]), port)))
    return resolved, failed


def run(
    servers: Sequence[str],
    transport: Transport,
    timeout: float = DEFAULT_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> NetcheckReport:
    """Drive one Netcheck over `transport` until every server answered or time is up."""
    resolved, failed = resolve_servers(servers)
    core = Netcheck(resolved, clock(), randbytes, timeout, failed)
    while True:
        now = clock()
        for payload, dst in core.datagrams_to_send(now):
            transport.send(payload, dst)
        if core.done(now):
            return core.report()
        deadline = core.next_deadline()
        wait = max(0.0, (deadline if deadline is not None else now) - now)
        got = transport.recv_wait(wait)
        if got is not None:
            core.receive_stun(got[0], got[1], clock())


class UdpTransport:
    """A plain UDP socket (any source port): for the CLI when no agent runs."""

    def __init__(self, bind: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes, dst: AddrPort) -> None:
        try:
            self.sock.sendto(payload, dst.sockaddr())
        except OSError as exc:  # no route to this server: it just won't answer
            log.debug("send to %s failed: %s", dst, exc)

    def recv_wait(self, timeout: float) -> tuple[bytes, AddrPort] | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            data, (ip, port) = self.sock.recvfrom(stun.MAX_MESSAGE_LEN + 1)
        except OSError:  # e.g. ICMP port unreachable reported on the socket
            return None
        try:
            return data, addr_port(ip, port)
        except ParseError:
            return None


class SharedPortTransport:
    """Adapts rawsock.SharedPortSocket (sending from WireGuard's port) to `Transport`."""

    def __init__(self, sock: SharedPortSocket) -> None:
        self.sock = sock

    def send(self, payload: bytes, dst: AddrPort) -> None:
        self.sock.send(payload, dst)

    def recv_wait(self, timeout: float) -> tuple[bytes, AddrPort] | None:
        got = self.sock.recv_wait(timeout)
        return (got.payload, got.src) if got is not None else None


def standalone(servers: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> NetcheckReport:
    """Netcheck from a fresh UDP socket (what `meshctl netcheck` does without an agent)."""
    transport = UdpTransport()
    try:
        return run(servers, transport, timeout)
    finally:
        transport.close()


def from_shared_port(
    sock: SharedPortSocket, servers: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S
) -> NetcheckReport:
    """Netcheck from WireGuard's port through the raw shared-port socket (root).

    Blocking; the agent drives a `Netcheck` core from its own loop instead.
    """
    return run(servers, SharedPortTransport(sock), timeout)
