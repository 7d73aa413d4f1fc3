"""Batched UDP receive and send with recvmmsg(2)/sendmmsg(2), through ctypes (shell).

A relay channel moves every packet of a relayed WireGuard flow: one recvfrom and one sendto
per packet cost the relay a Python round trip each. Here one recvmmsg fills up to SLOTS
datagrams in place and one sendmmsg sends them on, from the same memory, so the Python
work is per batch and the per-packet cost is the kernel's own.

    batch = Batch()
    n = batch.recv(in_fd)            # datagrams now in the slots
    size = batch.prepare_send(n)     # their lengths become the send lengths; total bytes
    sent = batch.send(out_fd, n)     # on a connected socket: no addresses needed

Where libc has no recvmmsg (or ctypes cannot load it), `available()` is False and callers
use plain recv/send.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Final

SLOTS: Final = 64  # datagrams per system call
SLOT_BYTES: Final = 65_536  # any UDP datagram fits: nothing is truncated
MSG_DONTWAIT: Final = 0x40
# Errors a connected UDP socket reports for an earlier ICMP error, or a full buffer: the
# batch is lost (UDP), the socket is fine.
TRANSIENT_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED,
                                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOBUFS})


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _load() -> tuple[object, object] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_CALLS = _load()


def available() -> bool:
    return _CALLS is not None


class Batch:
    """SLOTS receive slots in one buffer, and a send vector over the same memory.

    One Batch serves every socket of a single-threaded loop: a batch is received and sent
    on before the next one is read.
    """

    def __init__(self, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES) -> None:
        if _CALLS is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = _CALLS
        self.slots = slots
        self._buf = ctypes.create_string_buffer(slots * slot_bytes)
        base = ctypes.addressof(self._buf)
        self._riov = (_Iovec * slots)(*(_Iovec(base + i * slot_bytes, slot_bytes) for i in range(slots)))
        self._siov = (_Iovec * slots)(*(_Iovec(base + i * slot_bytes, 0) for i in range(slots)))
        self._rmsgs = (_Mmsghdr * slots)()
        self._smsgs = (_Mmsghdr * slots)()
        for i in range(slots):
            self._rmsgs[i].msg_hdr.msg_iov = ctypes.pointer(self._riov[i])
            self._rmsgs[i].msg_hdr.msg_iovlen = 1
            self._smsgs[i].msg_hdr.msg_iov = ctypes.pointer(self._siov[i])
            self._smsgs[i].msg_hdr.msg_iovlen = 1
        self._slot_bytes = slot_bytes
        self._view = memoryview(self._buf).cast("B")

    def recv(self, fd: int) -> int:
        """Datagrams read into the slots, without blocking (0: none queued, or a transient error)."""
        return _count(self._recvmmsg(fd, self._rmsgs, self.slots, MSG_DONTWAIT, None), "recvmmsg")  # type: ignore[operator]

    def prepare_send(self, n: int) -> int:
        """Make the first `n` received datagrams the send vector; their total size in bytes."""
        total = 0
        rmsgs, siov = self._rmsgs, self._siov
        for i in range(n):
            size = rmsgs[i].msg_len
            siov[i].iov_len = size
            total += size
        return total

    def send(self, fd: int, n: int) -> int:
        """Send the first `n` prepared datagrams on a connected socket; how many left (the rest are lost)."""
        return _count(self._sendmmsg(fd, self._smsgs, n, MSG_DONTWAIT), "sendmmsg")  # type: ignore[operator]

    def payload(self, i: int) -> bytes:
        """A copy of received datagram `i` (for tests and the rare slow path)."""
        return ctypes.string_at(ctypes.addressof(self._buf) + i * self._slot_bytes, self._rmsgs[i].msg_len)

    def view(self, i: int) -> memoryview:
        """Received datagram `i` in place, no copy: valid until the next recv."""
        start = i * self._slot_bytes
        return self._view[start : start + self._rmsgs[i].msg_len]


def _count(result: int, call: str) -> int:
    """A system call's datagram count; 0 for a transient error, OSError for any other."""
    if result >= 0:
        return result
    err = ctypes.get_errno()
    if err in TRANSIENT_ERRNOS:
        return 0
    raise OSError(err, f"{call}: {errno.errorcode.get(err, err)}")
