"""UDP socket helpers shared by the relay server, client and proxy (shell)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# Small (default ~200 KiB) buffers cap a relayed flow near 100 Mbit/s: a burst of WireGuard
# packets overflows them before the Python loop wakes up. Several MiB absorb that.
BUFFER_BYTES: Final = 8 * 1024 * 1024
# Datagrams read per wake-up: one readiness event, many packets (asyncio reads one).
RECV_BATCH: Final = 256
RECV_SIZE: Final = 65_535
# Linux SO_RCVBUFFORCE / SO_SNDBUFFORCE (not in every Python build's socket module).
SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_buffers(sock: socket.socket, size: int = BUFFER_BYTES) -> tuple[int, int]:
    """Ask for `size`-byte send and receive buffers; with CAP_NET_ADMIN, past net.core.*mem_max.

    Returns what the kernel granted (it reports twice the requested value).
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:  # needs CAP_NET_ADMIN (root, or the relay unit's ambient capability)
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)  # capped at net.core.[rw]mem_max
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def udp_socket(host: str, port: int, buffers: int = BUFFER_BYTES, reuse_port: bool = False,
               connect: tuple[str, int] | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (IPv4 or IPv6 by the host's form).

    With `reuse_port` and `connect`, a second socket on a listening port that receives only
    the datagrams of one remote address (Linux prefers the connected socket of a reuseport group).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_buffers(sock, buffers)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if connect is not None:
            sock.connect(connect)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_fd_limit(wanted: int = 65_536) -> int:
    """Lift the soft limit on open files towards `wanted` (at most the hard limit); the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def split_host_port(text: str) -> tuple[str, int]:
    """'1.2.3.4:5', '[::1]:5' or 'name:5' -> (host, port); ValueError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"not HOST:PORT: {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


_SYS_PIDFD_GETFD: Final = 438  # x86_64 and arm64 share this number


def _udp_inodes(pid: int, port: int) -> set[str]:
    """Socket inodes of UDP sockets bound to `port` in `pid`'s network namespace."""
    inodes: set[str] = set()
    for name in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def udp_socket_count(pid: int, port: int) -> int:
    """How many UDP sockets are bound to `port` in `pid`'s network namespace."""
    return len(_udp_inodes(pid, port))


def enlarge_process_udp_buffers(pid: int, port: int, size: int = BUFFER_BYTES) -> int:
    """Give another process's UDP sockets on `port` `size`-byte buffers (root; Linux >= 5.6).

    For wireguard-go releases before 0.0.20230223, which keep the 208 KiB default: it caps a
    direct TCP flow, and the relay proxy's bursts overflow it (the agent sizes its own
    wireguard-go's sockets with this; see wg/userspace.py).
    Takes a copy of the socket with pidfd_getfd(2), sets the options on the shared socket and
    closes the copy. Returns how many sockets were changed (0 when not permitted).
    """
    import ctypes

    inodes = _udp_inodes(pid, port)
    if not inodes:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    changed = 0
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return 0
    try:
        for fd_name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd_name}")
            except OSError:
                continue
            if not (link.startswith("socket:[") and link[8:-1] in inodes):
                continue
            copy = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd_name), 0)
            if copy < 0:
                continue
            sock = socket.socket(fileno=copy)
            try:
                set_buffers(sock, size)
                changed += 1
            finally:
                sock.close()  # closes our copy only
    finally:
        os.close(pidfd)
    return changed
