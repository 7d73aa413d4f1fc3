"""Shared-port I/O: STUN, disco and punch packets on WireGuard's UDP port (shell, IPv4, root).

WireGuard (kernel or wireguard-go) owns the UDP socket on its listen port, but a
NAT mapping is per source port, so STUN and disco must use that port too. We
therefore:

- send with a raw IPv4 socket (IPPROTO_RAW, which implies IP_HDRINCL): the whole
  packet is built by meshctl.nat.packet, with source port = the WireGuard port, a
  correct UDP checksum (the kernel does not fill it for raw sockets) and an optional
  IP TTL (TTL 2 for the pre-punch that opens our NAT without reaching the peer's);
- receive with a raw IPPROTO_UDP socket, which gets a copy of every incoming UDP
  packet, and a classic BPF program (SO_ATTACH_FILTER) that keeps only STUN/disco
  to the WireGuard port, so the agent stays idle under WireGuard load; `set_filter`
  narrows it to the map's disco keys and the STUN servers asked (packet.shared_port_filter).

WireGuard also receives these packets and drops them silently (they are not
WireGuard messages). This works the same for both WireGuard backends.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from meshctl.errors import MeshctlError
from meshctl.nat import packet
from meshctl.nat.addr import AddrPort
from meshctl.settings import SOCKET_MARK
from meshctl.udp import mmsg

log = logging.getLogger(__name__)

SO_ATTACH_FILTER: Final = 26  # linux/asm-generic/socket.h; not exported by the socket module
SO_MARK: Final = getattr(socket, "SO_MARK", 36)
RECV_BUFFER: Final = 1 << 20  # bursts of pongs/STUN replies must not be dropped
MAX_PACKET: Final = 65535
# What recv_raw reads: a disco packet is at most 1,200 bytes, STUN answers a few hundred, plus
# the IP and UDP headers. Longer ones arrive cut short and fail to parse (dropped, as they
# should be); a 64 KiB buffer per read cost a flood a third more CPU.
RECV_BYTES: Final = 2048
RECV_SLOTS: Final = 64  # packets per recvmmsg
PUNCH_TTL: Final = 2  # expires past our own NAT, before the peer's (conntrack poisoning cure)
PUNCH_PAYLOAD: Final = b""  # WireGuard drops it; only the NAT mapping matters


@dataclass(frozen=True, slots=True)
class Received:
    """One packet the filter let through: payload, who sent it, and to which of our addresses."""

    payload: bytes
    src: AddrPort
    dst: AddrPort
    ttl: int


def attach_filter(sock: socket.socket, prog: tuple[packet.BpfInsn, ...]) -> None:
    """Attach a classic BPF program (the kernel copies it, so the buffer may go away after)."""
    code = packet.pack_filter(prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def mark_underlay(sock: socket.socket) -> None:
    """SO_MARK: this socket's packets take the physical path even under an exit node's default
    route (the ip rule for SOCKET_MARK, router/policy_routing.py). Needs CAP_NET_ADMIN; without it
    no exit node or subnet route can be installed either, so nothing is lost."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, SOCKET_MARK)
    except OSError as exc:
        log.debug("SO_MARK not set: %s", exc.strerror)


def route_source(dst: AddrPort) -> ipaddress.IPv4Address:
    """The local IPv4 address the kernel would use towards `dst`: needed for the checksum."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        mark_underlay(probe)  # the route the marked packet itself will take
        probe.connect(dst.sockaddr())  # a route lookup; UDP connect sends nothing
        return ipaddress.IPv4Address(socket.inet_aton(probe.getsockname()[0]))  # bytes: no text parsing


class SharedPortSocket:
    """Send from and receive on `port` next to the WireGuard socket that owns it.

    `fileno()` is the receive socket, for select/asyncio `add_reader`. Non-blocking.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        try:
            self._tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise MeshctlError(
                "NAT traversal needs raw sockets", hint="run as root or with CAP_NET_RAW"
            ) from None
        mark_underlay(self._tx)
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self._ident = 0
        self._batch = mmsg.Batch(RECV_SLOTS, RECV_BYTES) if mmsg.available() else None
        try:
            self._rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            attach_filter(self._rx, packet.shared_port_filter(port))
            self._rx.setblocking(False)
            self._tx.setblocking(False)
            # Packets queued between socket() and the attach bypassed the filter: drop them.
            while True:
                try:
                    self._rx.recv(MAX_PACKET)
                except BlockingIOError:
                    break
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._rx.fileno()

    def close(self) -> None:
        self._rx.close()
        self._tx.close()

    def __enter__(self) -> SharedPortSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, payload: bytes, dst: AddrPort, ttl: int = packet.DEFAULT_TTL,
             src_ip: ipaddress.IPv4Address | None = None) -> bool:
        """Send one UDP datagram from our port to `dst`; `src_ip` defaults to the route's.

        Returns False when it could not be sent: IPv6 destinations (raw sending is
        IPv4 only for now), no route, a full buffer, or a firewall refusal.
        """
        if dst.ip.version != 4:
            log.debug("not sending to %s: raw shared-port sending is IPv4 only", dst)
            return False
        try:
            src = src_ip or route_source(dst)
        except OSError as exc:
            log.debug("no route to %s: %s", dst, exc.strerror)
            return False
        self._ident = (self._ident + 1) & 0xFFFF
        raw = packet.build_ipv4_udp(
            packet.UdpPacket(AddrPort(src, self.port), dst, payload, ttl), ident=self._ident
        )
        try:
            self._tx.sendto(raw, (str(dst.ip), 0))
        except OSError as exc:
            # Unreachable networks and full buffers are normal for probes: log, don't crash.
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAGAIN, errno.EPERM):
                log.debug("send to %s failed: %s", dst, exc.strerror)
                return False
            raise
        return True

    def punch(self, dst: AddrPort, ttl: int = PUNCH_TTL) -> bool:
        """A low-TTL packet that opens our NAT's mapping towards `dst` and dies before it."""
        return self.send(PUNCH_PAYLOAD, dst, ttl=ttl)

    def set_filter(self, disco_senders: Sequence[bytes] | None, stun_sources: Sequence[AddrPort] | None) -> None:
        """Replace the BPF program (atomically: no packet passes unfiltered meanwhile)."""
        attach_filter(self._rx, packet.shared_port_filter(self.port, disco_senders=disco_senders,
                                                          stun_sources=stun_sources))

    def recv_raw(self) -> bytes | None:
        """The next packet the filter let through, IPv4 header and all; None if none is queued."""
        try:
            return self._rx.recv(RECV_BYTES)
        except BlockingIOError:
            return None

    def recv_admitted(self, admit: Callable[[bytes | memoryview], bool], limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` queued packets, each shown to `admit` (IPv4 header and all) before it is
        copied out: (the admitted packets, how many were refused). With recvmmsg one system
        call reads 64, and a refused packet costs a look at its header in the buffer."""
        if self._batch is None:
            admitted: list[bytes] = []
            refused = 0
            for _ in range(limit):
                if (raw := self.recv_raw()) is None:
                    break
                if admit(raw):
                    admitted.append(raw)
                else:
                    refused += 1
            return admitted, refused
        admitted, refused = [], 0
        batch = self._batch
        while limit > 0:
            n = batch.recv(self._rx.fileno())
            for i in range(n):
                view = batch.view(i)
                if admit(view):
                    admitted.append(bytes(view))
                else:
                    refused += 1
            limit -= n
            if n < batch.slots:
                break
        return admitted, refused

    def parse(self, data: bytes) -> Received | None:
        """A raw packet as a Received, or None for one that is not whole UDP to our port."""
        try:
            pkt = packet.parse_ipv4_udp(data)
        except packet.PacketError as exc:
            log.debug("dropped raw packet: %s", exc)
            return None
        if pkt.dst.port != self.port:  # the filter already checks; belt and braces
            return None
        return Received(pkt.payload, pkt.src, pkt.dst, pkt.ttl)

    def recv(self) -> Received | None:
        """The next STUN/disco packet for our port, or None if none is queued."""
        while (data := self.recv_raw()) is not None:
            got = self.parse(data)
            if got is not None:
                return got
        return None

    def recv_wait(self, timeout: float) -> Received | None:
        """Block up to `timeout` seconds for the next packet (for the standalone tools)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.recv()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self._rx], [], [], left)
