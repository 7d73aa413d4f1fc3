"""This host's IPv4 addresses from one netlink dump (meshctl/netaddrs.py): the local candidates."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.netaddrs import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    NLMSG_DONE,
    NLMSG_HDR,
    RTATTR,
    RTM_NEWADDR,
    ipv4_interfaces,
    local_candidates,
    parse_addr_messages,
)


def attr(kind: int, value: bytes) -> bytes:
    raw = RTATTR.pack(RTATTR.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def newaddr(index: int, ip: str, prefix: int) -> bytes:
    body = IFADDRMSG.pack(socket.AF_INET, prefix, 0, 0, index) + attr(IFA_ADDRESS, socket.inet_aton(ip)) \
        + attr(IFA_LOCAL, socket.inet_aton(ip))
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_NEWADDR, 2, 1, 0) + body


DONE = NLMSG_HDR.pack(NLMSG_HDR.size + 4, NLMSG_DONE, 2, 1, 0) + struct.pack("=i", 0)


def test_a_dump_is_read_to_its_end() -> None:
    got, done = parse_addr_messages(newaddr(2, "10.0.1.10", 24) + newaddr(3, "192.168.7.2", 16))
    assert not done
    assert got == [(2, ipaddress.IPv4Interface("10.0.1.10/24")), (3, ipaddress.IPv4Interface("192.168.7.2/16"))]
    assert parse_addr_messages(DONE) == ([], True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_end_in_a_value(data: bytes) -> None:
    got, _done = parse_addr_messages(newaddr(2, "10.0.1.10", 24) + data)
    assert got[0] == (2, ipaddress.IPv4Interface("10.0.1.10/24"))


def test_this_hosts_addresses_without_loopback() -> None:
    found = ipv4_interfaces()
    assert all(not i.ip.is_loopback for i in found)
    lo = ipv4_interfaces("lo")
    assert lo == found  # leaving out an interface with no global address changes nothing


def test_local_candidates_carry_wireguards_port() -> None:
    ifaces = [ipaddress.IPv4Interface("10.0.1.10/24"), ipaddress.IPv4Interface("10.0.1.10/24"),
              ipaddress.IPv4Interface("203.0.113.4/24")]
    assert local_candidates(ifaces, 51820) == ("10.0.1.10:51820", "203.0.113.4:51820")
