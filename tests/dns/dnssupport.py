"""Helpers for the MagicDNS tests: a small NetMap, a threaded server, a stub upstream."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from meshctl.coord.netmap import NetMap, NetworkSettings, Peer
from meshctl.dns.zone import Zone
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

DOMAIN = "example.mesh"


def make_peer(name: str, *addrs: str) -> Peer:
    return Peer(
        name=name,
        identity_key=SigningKey.generate().public(),
        wg_public_key=NodePrivate.generate().public(),
        disco_key=DiscoPrivate.generate().public(),
        addresses=tuple(ipaddress.ip_address(a) for a in addrs),
    )


def make_netmap(peers: list[Peer], domain: str = DOMAIN, serial: int = 7) -> NetMap:
    return NetMap(
        network=NetworkSettings(
            network_id="net-test",
            name="test",
            ipv4_cidr=ipaddress.IPv4Network("100.64.0.0/10"),
            ipv6_prefix=ipaddress.IPv6Network("fd7a:115c:a1e0::/48"),
            domain=domain,
        ),
        serial=serial,
        expires=2_000_000_000,
        state_sha256="0" * 64,
        peers=tuple(sorted(peers, key=lambda p: p.name)),
    )


PEERS = [
    make_peer("desktop", "100.64.0.1", "fd7a:115c:a1e0::1"),
    make_peer("laptop", "100.64.0.2", "fd7a:115c:a1e0::2"),
    make_peer("v4only", "100.64.0.3"),
]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (checked, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class ServerThread:
    """A DnsServer running on its own asyncio loop in a thread, so tests can call `dig`."""

    def __init__(self, zone: Zone, upstreams: list[tuple[str, int]], *,
                 listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 0),), **kwargs: object) -> None:
        import asyncio
        import threading

        from meshctl.dns.server import DnsServer

        self.loop = asyncio.new_event_loop()
        self.server = DnsServer(zone, list(listen), upstreams, **kwargs)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start())
        self.port = self.server.addresses[0][1]

    def call(self, coro: object) -> object:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)  # type: ignore[arg-type]

    def update_zone(self, zone: Zone) -> None:
        """Swap the zone on the server's loop and wait until it is done."""

        async def swap() -> None:
            self.server.update_zone(zone)

        self.call(swap())

    def close(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
            self.loop.close()


UPSTREAM_NAME = "www.upstream.test"
UPSTREAM_ADDR = "192.0.2.7"
BIG_NAME = "big.upstream.test"  # answered with more than 512 bytes: UDP truncates, TCP retry


class StubUpstream:
    """A tiny dnslib DNS server on loopback (UDP and TCP), standing in for the ISP resolver."""

    def __init__(self) -> None:
        import dnslib
        from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

        self.queries: list[str] = []
        outer = self

        class Resolver(BaseResolver):  # type: ignore[misc]
            def resolve(self, request: dnslib.DNSRecord, handler: object) -> dnslib.DNSRecord:
                qname = str(request.q.qname).rstrip(".").lower()
                outer.queries.append(qname)
                reply = request.reply()
                if qname == UPSTREAM_NAME and request.q.qtype == dnslib.QTYPE.A:
                    reply.add_answer(dnslib.RR(request.q.qname, dnslib.QTYPE.A, rdata=dnslib.A(UPSTREAM_ADDR)))
                elif qname == BIG_NAME:
                    for i in range(40):
                        reply.add_answer(
                            dnslib.RR(
                                request.q.qname,
                                dnslib.QTYPE.TXT,
                                rdata=dnslib.TXT(f"record {i:02d} " + "x" * 20),
                            )
                        )
                else:
                    reply.header.rcode = dnslib.RCODE.NXDOMAIN
                return reply

        class Handler(DNSHandler):  # type: ignore[misc]
            udplen = 512  # truncate like a real server does

        self.port = free_port()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data")
        self.udp = DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=quiet, handler=Handler)
        self.tcp = DNSServer(Resolver(), port=self.port, address="127.0.0.1", logger=quiet, handler=Handler, tcp=True)
        self.udp.start_thread()
        self.tcp.start_thread()

    def close(self) -> None:
        self.udp.stop()
        self.tcp.stop()
        self.udp.server.server_close()
        self.tcp.server.server_close()


def dig(port: int, *args: str) -> str:
    """Run the real `dig` against 127.0.0.1:port; return its full output."""
    import shutil
    import subprocess

    if shutil.which("dig") is None:
        pytest.skip("dig not installed (Debian package dnsutils)")
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout
