"""This host's IPv4 addresses with their prefixes, from one netlink dump (shell).

A device's local candidates (its endpoint record, its call-me-maybe) are its addresses with
WireGuard's port. `meshctl sync` from cron asks on every run, so this is one RTM_GETADDR
request on a raw netlink socket (about a millisecond), not pyroute2 (a tenth of a second to
import). SIOCGIFCONF would be cheaper still but misses secondary addresses.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Final

RTM_NEWADDR: Final = 20
RTM_GETADDR: Final = 22
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
NLMSG_HDR: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFADDRMSG: Final = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
RTATTR: Final = struct.Struct("=HH")  # length, type
RECV_BYTES: Final = 64 * 1024
MAX_MESSAGES: Final = 100_000  # a dump of more addresses than any host has: stop reading


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_addr_messages(data: bytes) -> tuple[list[tuple[int, ipaddress.IPv4Interface]], bool]:
    """(interface index, address) of each RTM_NEWADDR in one read, and whether the dump ended."""
    out: list[tuple[int, ipaddress.IPv4Interface]] = []
    pos = 0
    while pos + NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > len(data):
            return out, True  # truncated or malformed: keep what was read
        if kind == NLMSG_DONE or kind == NLMSG_ERROR:
            return out, True
        body = pos + NLMSG_HDR.size
        if kind == RTM_NEWADDR and length >= NLMSG_HDR.size + IFADDRMSG.size:
            family, prefixlen, _f, _scope, index = IFADDRMSG.unpack_from(data, body)
            local = address = None
            attr = body + IFADDRMSG.size
            while attr + RTATTR.size <= pos + length:
                alen, atype = RTATTR.unpack_from(data, attr)
                if alen < RTATTR.size or attr + alen > pos + length:
                    break
                value = data[attr + RTATTR.size : attr + alen]
                if atype == IFA_LOCAL and len(value) == 4:
                    local = value
                elif atype == IFA_ADDRESS and len(value) == 4:
                    address = value
                attr += _align(alen)
            raw = local or address
            if family == socket.AF_INET and raw is not None and prefixlen <= 32:
                out.append((index, ipaddress.IPv4Interface((raw, prefixlen))))
        pos += _align(length)
    return out, False


def ipv4_interfaces(exclude_ifname: str | None = None) -> list[ipaddress.IPv4Interface]:
    """Global IPv4 addresses with prefixes, except loopback, link-local and `exclude_ifname`'s."""
    found: list[tuple[int, ipaddress.IPv4Interface]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "big")
        body = IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
        sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                  + body)
        done = False
        while not done and len(found) < MAX_MESSAGES:
            got, done = parse_addr_messages(sock.recv(RECV_BYTES))
            found += got
    excluded = _index_of(exclude_ifname)
    return [iface for index, iface in found
            if index != excluded and not (iface.ip.is_loopback or iface.ip.is_link_local)]


def _index_of(ifname: str | None) -> int | None:
    if not ifname:
        return None
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None  # no such interface (not up yet): nothing to leave out


def local_candidates(ifaces: list[ipaddress.IPv4Interface], port: int) -> tuple[str, ...]:
    """The candidates of these addresses with WireGuard's port, as an endpoint record holds them."""
    return tuple(dict.fromkeys(f"{i.ip}:{port}" for i in ifaces if not i.ip.is_unspecified))
