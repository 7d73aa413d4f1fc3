"""The real `dig` against DnsServer on 127.0.0.1:<port>, with a stub upstream (dnslib) for
forwarded names. No root needed."""

from __future__ import annotations

import asyncio
import socket
import struct

import dnslib
import pytest
from dnssupport import (
    BIG_NAME,
    PEERS,
    UPSTREAM_ADDR,
    UPSTREAM_NAME,
    ServerThread,
    StubUpstream,
    dig,
    free_port,
    make_netmap,
    make_peer,
)

from meshctl.dns.server import DnsServer
from meshctl.dns.zone import Zone, zone_from_netmap
from meshctl.errors import MeshctlError


def answers(out: str) -> list[str]:
    """The rdata column of dig's ANSWER section."""
    section, rows = False, []
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
        elif section and (not line.strip() or line.startswith(";;")):
            break
        elif section:
            rows.append(line.split()[-1])
    return rows


def status(out: str) -> str:
    for line in out.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    raise AssertionError(f"no reply from the server:\n{out}")


def test_dig_a(dns_server: ServerThread) -> None:
    out = dig(dns_server.port, "desktop.example.mesh", "A")
    assert status(out) == "NOERROR" and answers(out) == ["100.64.0.1"]
    assert " aa" in out.split("flags:")[1].split(";")[0]


def test_dig_aaaa(dns_server: ServerThread) -> None:
    out = dig(dns_server.port, "laptop.example.mesh", "AAAA")
    assert answers(out) == ["fd7a:115c:a1e0::2"]


def test_dig_reverse(dns_server: ServerThread) -> None:
    assert answers(dig(dns_server.port, "-x", "100.64.0.2")) == ["laptop.example.mesh."]
    assert answers(dig(dns_server.port, "-x", "fd7a:115c:a1e0::1")) == ["desktop.example.mesh."]


def test_dig_nxdomain(dns_server: ServerThread) -> None:
    out = dig(dns_server.port, "nosuch.example.mesh")
    assert status(out) == "NXDOMAIN" and "SOA" in out


def test_dig_tcp(dns_server: ServerThread) -> None:
    out = dig(dns_server.port, "+tcp", "desktop.example.mesh")
    assert answers(out) == ["100.64.0.1"] and "(TCP)" in out


def test_dig_forwarded_to_upstream(dns_server: ServerThread, upstream: StubUpstream) -> None:
    out = dig(dns_server.port, UPSTREAM_NAME)
    assert status(out) == "NOERROR" and answers(out) == [UPSTREAM_ADDR]
    assert UPSTREAM_NAME in upstream.queries
    assert status(dig(dns_server.port, "missing.upstream.test")) == "NXDOMAIN"
    # mesh names never reach the upstream
    dig(dns_server.port, "desktop.example.mesh")
    assert "desktop.example.mesh" not in upstream.queries


def test_truncated_upstream_reply_is_retried_over_tcp(dns_server: ServerThread, upstream: StubUpstream) -> None:
    # dig over TCP: we ask upstream over UDP, get TC, ask again over TCP, return all 40.
    out = dig(dns_server.port, "+tcp", BIG_NAME, "TXT")
    assert len(answers(out)) == 40
    # dig over UDP without EDNS: the full answer does not fit in 512 bytes -> TC to dig,
    # which (by default) retries over TCP itself and gets all 40.
    out = dig(dns_server.port, "+noedns", BIG_NAME, "TXT")
    assert "Truncated, retrying in TCP mode" in out and len(answers(out)) == 40


def test_zone_update_visible_without_restart(dns_server: ServerThread) -> None:
    assert answers(dig(dns_server.port, "desktop.example.mesh")) == ["100.64.0.1"]
    renamed = [make_peer("workstation", "100.64.0.1"), *PEERS[1:]]
    dns_server.update_zone(zone_from_netmap(make_netmap(renamed, serial=8)))
    assert status(dig(dns_server.port, "desktop.example.mesh")) == "NXDOMAIN"
    assert answers(dig(dns_server.port, "workstation.example.mesh")) == ["100.64.0.1"]
    assert answers(dig(dns_server.port, "-x", "100.64.0.1")) == ["workstation.example.mesh."]
    revoked = [p for p in PEERS if p.name != "laptop"]
    dns_server.update_zone(zone_from_netmap(make_netmap(revoked, serial=9)))
    assert status(dig(dns_server.port, "laptop.example.mesh")) == "NXDOMAIN"


def test_refused_outside_domain_without_upstream(zone: Zone) -> None:
    srv = ServerThread(zone, [])
    try:
        assert status(dig(srv.port, "example.com")) == "REFUSED"
        assert answers(dig(srv.port, "desktop.example.mesh")) == ["100.64.0.1"]
    finally:
        srv.close()


def test_dead_upstream_gives_servfail_not_silence(zone: Zone) -> None:
    dead = free_port()  # nothing listens: ICMP port unreachable, then the next upstream
    srv = ServerThread(zone, [("127.0.0.1", dead)], forward_timeout_s=0.5)
    try:
        assert status(dig(srv.port, "example.com")) == "SERVFAIL"
        assert srv.server.stats.servfail == 1
    finally:
        srv.close()


def test_garbage_over_udp_and_tcp_does_not_stop_the_server(dns_server: ServerThread) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\x12\x34\x01\x00" + b"\xff" * 28, ("127.0.0.1", dns_server.port))
        reply = s.recv(512)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 1  # FORMERR
        s.sendto(b"\x01", ("127.0.0.1", dns_server.port))  # dropped silently
    with socket.create_connection(("127.0.0.1", dns_server.port), timeout=2) as t:
        t.sendall(struct.pack("!H", 5) + b"\x00" * 5)  # too short: the connection is closed
        assert t.recv(10) == b""
    assert answers(dig(dns_server.port, "desktop.example.mesh")) == ["100.64.0.1"]
    assert dns_server.server.stats.dropped >= 2


def test_several_queries_on_one_tcp_connection(dns_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", dns_server.port), timeout=2) as t:
        for qid, name in ((1, "desktop.example.mesh"), (2, "laptop.example.mesh")):
            q = dnslib.DNSRecord.question(name)
            q.header.id = qid
            data = bytes(q.pack())
            t.sendall(struct.pack("!H", len(data)) + data)
        got = []
        buf = b""
        while len(got) < 2:
            buf += t.recv(4096)
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                got.append(dnslib.DNSRecord.parse(buf[2 : 2 + n]))
                buf = buf[2 + n :]
    assert [(r.header.id, str(r.rr[0].rdata)) for r in got] == [(1, "100.64.0.1"), (2, "100.64.0.2")]


def test_bind_failure_is_a_meshctl_error(zone: Zone) -> None:
    async def scenario() -> None:
        first = DnsServer(zone, [("127.0.0.1", 0)])
        await first.start()
        try:
            second = DnsServer(zone, [first.addresses[0]])
            with pytest.raises(MeshctlError, match="cannot listen for DNS on 127.0.0.1"):
                await second.start()
            assert second.addresses == []
        finally:
            await first.stop()

    asyncio.run(scenario())


def test_listens_on_address_not_yet_configured(zone: Zone) -> None:
    """IP_FREEBIND: the server may start before 100.100.100.100 is on the interface."""

    async def scenario() -> None:
        srv = DnsServer(zone, [("100.100.100.100", free_port())])
        await srv.start()
        try:
            assert srv.addresses[0][0] == "100.100.100.100"
        finally:
            await srv.stop()

    asyncio.run(scenario())


def test_forwarded_over_tcp_client(dns_server: ServerThread) -> None:
    out = dig(dns_server.port, "+tcp", UPSTREAM_NAME)
    assert answers(out) == [UPSTREAM_ADDR] and "(TCP)" in out


def test_concurrent_forwards_are_bounded(zone: Zone) -> None:
    """With max_forwards=1 and an upstream that never answers, a second query in flight
    gets SERVFAIL at once instead of queueing; the first gets SERVFAIL at its timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))  # receives, never answers
        srv = ServerThread(zone, [hole.getsockname()], forward_timeout_s=1.5, max_forwards=1)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                for qid in (1, 2):
                    qq = dnslib.DNSRecord.question(f"n{qid}.example.com")
                    qq.header.id = qid
                    c.sendto(bytes(qq.pack()), ("127.0.0.1", srv.port))
                first = dnslib.DNSRecord.parse(c.recv(512))
                second = dnslib.DNSRecord.parse(c.recv(512))
            assert (first.header.id, first.header.rcode) == (2, dnslib.RCODE.SERVFAIL)
            assert (second.header.id, second.header.rcode) == (1, dnslib.RCODE.SERVFAIL)
            assert srv.server.stats.servfail == 2 and srv.server.stats.forwarded == 1
        finally:
            srv.close()
