"""Who MagicDNS answers, with the real `dig` from real source addresses (issue 23; issue 16 item 5).

A namespace of its own holds the server (as node "desktop": 100.64.0.1, fd7a:115c:a1e0::1 and
100.100.100.100, port 53), the stub upstream (127.0.0.1) and every asker's address on loopback:
laptop and v4only (members), 192.0.2.9 and 2001:db8::9 (strangers). Each query is sent from the
address it names (`dig -b`), so the server sees exactly what it would see on a node.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import dnslib
import pytest
from dnssupport import PEERS, UPSTREAM_ADDR, UPSTREAM_NAME, ServerThread, StubUpstream, make_netmap

from meshctl.dns.server import MEMBER_QUERY_BURST
from meshctl.dns.zone import zone_from_netmap

pytestmark = pytest.mark.netns

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
OWN4, OWN6, MAGIC = "100.64.0.1", "fd7a:115c:a1e0::1", "100.100.100.100"
MEMBER4, MEMBER6, OTHER_MEMBER = "100.64.0.2", "fd7a:115c:a1e0::2", "100.64.0.3"
STRANGER4, STRANGER6 = "192.0.2.9", "2001:db8::9"


def in_netns(ns: str, make: Callable[[], T]) -> T:
    """`make()` on a thread moved into `ns`: its sockets, and threads it starts, live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: list[T | BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append(make())
        except BaseException as exc:  # handed to the caller
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


@dataclass(frozen=True)
class DigReply:
    status: str  # NOERROR, REFUSED, ...
    ra: bool  # recursion available
    rows: list[str]  # the rdata column of the answer section


@dataclass
class DnsNs:
    ns: str
    server: ServerThread
    upstream: StubUpstream

    def dig(self, source: str, server: str, *args: str) -> DigReply | None:
        """The reply to one query sent from `source`, or None when none came."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, "dig", "-b", source, f"@{server}", "-p", "53",
                               "+time=1", "+tries=1", *args], capture_output=True, text=True, timeout=20)
        if ";; Got answer:" not in proc.stdout:
            return None
        got = proc.stdout.split(";; Got answer:")[1]
        section = got.split("ANSWER SECTION:")[1].split("\n\n")[0] if "ANSWER SECTION:" in got else ""
        return DigReply(got.split("status:")[1].split(",")[0].strip(),
                        " ra" in got.split("flags:")[1].split(";")[0],
                        [line.split()[-1] for line in section.strip().splitlines()])


@pytest.fixture(scope="module")
def dns_ns() -> Iterator[DnsNs]:
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    if shutil.which("dig") is None:
        pytest.skip("dig not installed (Debian package dnsutils)")
    ns = f"dnsa-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for addr in (OWN4, MAGIC, MEMBER4, OTHER_MEMBER, STRANGER4):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
        for addr in (OWN6, MEMBER6, STRANGER6):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/128", "dev", "lo", "nodad"], check=True)
        zone = zone_from_netmap(make_netmap(PEERS).with_self("desktop"))
        upstream = in_netns(ns, StubUpstream)
        server = in_netns(ns, lambda: ServerThread(zone, [("127.0.0.1", upstream.port)],
                                                    listen=((OWN4, 53), (MAGIC, 53), (OWN6, 53))))
        try:
            yield DnsNs(ns, server, upstream)
        finally:
            server.close()
            upstream.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def rows(reply: DigReply | None) -> list[str]:
    assert reply is not None, "no reply"
    return reply.rows


def test_a_member_gets_mesh_names_on_every_address(dns_ns: DnsNs) -> None:
    for source, server in ((MEMBER4, OWN4), (MEMBER6, OWN6), (MEMBER4, MAGIC)):
        assert rows(dns_ns.dig(source, server, "laptop.example.mesh")) == ["100.64.0.2"], (source, server)
        assert rows(dns_ns.dig(source, server, "AAAA", "desktop.example.mesh")) == ["fd7a:115c:a1e0::1"]
        assert rows(dns_ns.dig(source, server, "-x", "100.64.0.3")) == ["v4only.example.mesh."]


def test_a_member_gets_no_name_from_this_nodes_upstream(dns_ns: DnsNs) -> None:
    """Issue 16 item 5: the node's (often private) upstream resolvers are the node's own."""
    before = len(dns_ns.upstream.queries)
    for source, server in ((MEMBER4, OWN4), (MEMBER6, OWN6), (MEMBER4, MAGIC)):
        for transport in ("+notcp", "+tcp"):
            reply = dns_ns.dig(source, server, transport, UPSTREAM_NAME)
            assert reply is not None and reply.status == "REFUSED" and not reply.rows, (source, server, transport)
            assert not reply.ra
    assert len(dns_ns.upstream.queries) == before, "a member's query reached the upstream"


def test_the_node_itself_gets_everything(dns_ns: DnsNs) -> None:
    for source, server in (("127.0.0.1", MAGIC), (OWN4, OWN4), (MAGIC, MAGIC), (OWN6, OWN6)):
        assert rows(dns_ns.dig(source, server, UPSTREAM_NAME)) == [UPSTREAM_ADDR], (source, server)
        assert rows(dns_ns.dig(source, server, "laptop.example.mesh")) == ["100.64.0.2"]


def test_a_stranger_gets_no_answer_at_all(dns_ns: DnsNs) -> None:
    strangers_before = dns_ns.server.server.stats.strangers
    for source, server in ((STRANGER4, OWN4), (STRANGER4, MAGIC), (STRANGER6, OWN6)):
        assert dns_ns.dig(source, server, "laptop.example.mesh") is None, (source, server)
        assert dns_ns.dig(source, server, UPSTREAM_NAME) is None
        assert dns_ns.dig(source, server, "+tcp", "laptop.example.mesh") is None
    assert dns_ns.server.server.stats.strangers - strangers_before >= 6  # dropped unread, not lost


def test_a_flooding_member_is_limited_and_others_are_not(dns_ns: DnsNs) -> None:
    query = dnslib.DNSRecord.question("laptop.example.mesh").pack()

    def flood() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((MEMBER4, 0))
        sock.settimeout(0.5)
        for i in range(3000):
            sock.sendto(query, (OWN4, 53))
            if i % 100 == 99:
                time.sleep(0.005)  # not past the server's socket buffer: every query is seen
        replies = 0
        try:
            while True:
                sock.recv(1500)
                replies += 1
        except TimeoutError:
            pass
        sock.close()
        return replies

    stats = dns_ns.server.server.stats
    seen, limited = stats.queries, stats.rate_limited
    replies = in_netns(dns_ns.ns, flood)
    seen, limited = stats.queries - seen, stats.rate_limited - limited
    assert seen > 2000 and MEMBER_QUERY_BURST / 2 <= replies < seen / 3, (seen, replies)
    assert limited == seen - replies
    assert rows(dns_ns.dig(OTHER_MEMBER, OWN4, "laptop.example.mesh")) == ["100.64.0.2"]
    assert rows(dns_ns.dig("127.0.0.1", MAGIC, "laptop.example.mesh")) == ["100.64.0.2"]
