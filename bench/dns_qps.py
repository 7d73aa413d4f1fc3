#!/usr/bin/env python3
"""MagicDNS throughput and latency: queries per second for mesh names, and p99 latency.

Runs meshctl's DnsServer on 127.0.0.1 (a spare port) with a 250-member zone and drives it
with dnsperf (Debian package `dnsperf`), or with a small asyncio load generator in a
separate process when dnsperf is missing. The baseline, in the same run, is the plainest
asyncio UDP server (DatagramProtocol, one constant reply): the ratio shows what name
lookup and reply building cost over that.

    .venv/bin/python bench/dns_qps.py [--seconds 5] [--generator builtin|dnsperf]

Goal (issue 7): at least 5,000 q/s for mesh names on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshctl.coord.netmap import NetMap, NetworkSettings, Peer  # noqa: E402
from meshctl.dns.server import DnsServer  # noqa: E402
from meshctl.dns.zone import Zone, zone_from_netmap  # noqa: E402
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey  # noqa: E402

PEERS = 250
DOMAIN = "example.mesh"
OUTSTANDING = 100  # queries in flight (dnsperf's default)
GOAL_QPS = 5000


@dataclass
class Result:
    name: str
    qps: float
    p50_ms: float
    p99_ms: float
    lost: int


def build_zone() -> Zone:
    signing, node, disco = (
        SigningKey.generate().public(),
        NodePrivate.generate().public(),
        DiscoPrivate.generate().public(),
    )
    peers = tuple(
        Peer(
            name=f"node{i:03d}",
            identity_key=signing,
            wg_public_key=node,
            disco_key=disco,
            addresses=(
                ipaddress.ip_address(f"100.64.{i // 250}.{i % 250 + 1}"),
                ipaddress.ip_address(f"fd7a:115c:a1e0::{i + 1:x}"),
            ),
        )
        for i in range(PEERS)
    )
    netmap = NetMap(
        network=NetworkSettings(
            "bench",
            "bench",
            ipaddress.IPv4Network("100.64.0.0/10"),
            ipaddress.IPv6Network("fd7a:115c:a1e0::/48"),
            DOMAIN,
        ),
        serial=1,
        expires=2_000_000_000,
        state_sha256="0" * 64,
        peers=peers,
    )
    return zone_from_netmap(netmap)


def mesh_queries() -> list[str]:
    return [f"node{i:03d}.{DOMAIN} {t}" for i in range(PEERS) for t in ("A", "AAAA")]


def nxdomain_queries(n: int = 20000) -> list[str]:
    rnd = random.Random(7)
    return [f"x{rnd.getrandbits(40):010x}.{DOMAIN} A" for _ in range(n)]


# -- servers under test -------------------------------------------------------------------


class _ConstantReply(asyncio.DatagramProtocol):
    """Baseline: the plainest asyncio DNS responder (same reply for every query)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and len(data) >= 12:
            self.transport.sendto(data[:2] + self.reply[2:], addr)


def _constant_reply() -> bytes:
    import dnslib

    q = dnslib.DNSRecord.question(f"node000.{DOMAIN}")
    r = q.reply()
    r.add_answer(dnslib.RR(f"node000.{DOMAIN}", rdata=dnslib.A("100.64.0.1"), ttl=60))
    return bytes(r.pack())


# -- load generators ------------------------------------------------------------------------


def parse_dnsperf(output: str, name: str) -> Result:
    latencies: list[float] = []
    qps = 0.0
    lost = 0
    for line in output.splitlines():
        if line.startswith("> "):
            try:
                latencies.append(float(line.split()[-1]))
            except ValueError:
                pass
        elif "Queries per second:" in line:
            qps = float(line.split(":")[1])
        elif "Queries lost:" in line:
            lost = int(line.split(":")[1].split()[0])
    return _result(name, qps, latencies, lost)


def _result(name: str, qps: float, latencies: list[float], lost: int) -> Result:
    if not latencies:
        return Result(name, qps, float("nan"), float("nan"), lost)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Result(name, qps, statistics.median(latencies) * 1e3, p99 * 1e3, lost)


async def run_dnsperf(port: int, queries: list[str], seconds: float, name: str) -> Result:
    """Two runs: flat out for q/s (no per-query output, which would cost the 2-CPU box
    a lot), then paced at the goal rate with -v for the latency distribution."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "queries.txt"
        data.write_text("\n".join(queries) + "\n")
        out = Path(tmp) / "out.txt"
        base = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", str(seconds), "-t", "2"]
        runs = [base + ["-q", str(OUTSTANDING)], base + ["-q", str(OUTSTANDING), "-Q", str(GOAL_QPS), "-v"]]
        texts = []
        for argv in runs:
            with out.open("w") as fh:
                proc = await asyncio.create_subprocess_exec(*argv, stdout=fh, stderr=subprocess.STDOUT)
                await proc.wait()
            texts.append(out.read_text())
        flat, paced = parse_dnsperf(texts[0], name), parse_dnsperf(texts[1], name)
        return Result(name, flat.qps, paced.p50_ms, paced.p99_ms, flat.lost + paced.lost)


async def run_builtin(port: int, queries: list[str], seconds: float, name: str) -> Result:
    """The fallback generator, in its own process so it does not share our GIL: flat out
    for q/s, then paced at the goal rate for latency."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "queries.txt"
        data.write_text("\n".join(queries) + "\n")
        for rate in (0, GOAL_QPS):
            argv = [sys.executable, __file__, "--as-generator", str(port), str(data), str(seconds), str(rate)]
            proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            qps_s, lost_s, *lat = out.decode().split()
            results.append(_result(name, float(qps_s), [float(x) for x in lat], int(lost_s)))
    flat, paced = results
    return Result(name, flat.qps, paced.p50_ms, paced.p99_ms, flat.lost + paced.lost)


def generator_main(port: int, data: Path, seconds: float, max_qps: int) -> None:
    """Up to OUTSTANDING queries in flight on one socket, flat out or paced at `max_qps`;
    prints q/s, lost (unanswered after 2 s) and every latency in seconds."""
    import select

    import dnslib

    wires = []
    for line in data.read_text().split("\n"):
        if line.strip():
            qname, qtype = line.split()
            wires.append(bytes(dnslib.DNSRecord.question(qname, qtype).pack()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_id = lost = i = 0
    start = time.perf_counter()
    interval = 1.0 / max_qps if max_qps else 0.0
    next_send = start
    while (now := time.perf_counter()) - start < seconds:
        while len(sent_at) < OUTSTANDING and (not interval or now >= next_send):
            next_id = (next_id + 1) & 0xFFFF
            if next_id in sent_at:  # still unanswered after 65536 queries: lost
                lost += 1
            sock.send(struct.pack("!H", next_id) + wires[i % len(wires)][2:])
            sent_at[next_id] = now
            i += 1
            next_send += interval
            now = time.perf_counter()
        wait = max(0.0, next_send - now) if interval and len(sent_at) < OUTSTANDING else 0.05
        if not select.select([sock], [], [], wait)[0]:
            stale = [k for k, t0 in sent_at.items() if now - t0 > 2.0]
            for k in stale:
                del sent_at[k]
            lost += len(stale)
            continue
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                break
            t0 = sent_at.pop(struct.unpack_from("!H", reply)[0], None)
            if t0 is not None:
                latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    print(len(latencies) / elapsed, lost, *(f"{x:.6f}" for x in latencies))


# -- main --------------------------------------------------------------------------------------


async def main(seconds: float, generator: str) -> list[Result]:
    loop = asyncio.get_running_loop()
    run = run_dnsperf if generator == "dnsperf" else run_builtin
    results = []

    base_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    base_sock.bind(("127.0.0.1", 0))
    transport, _ = await loop.create_datagram_endpoint(lambda: _ConstantReply(_constant_reply()), sock=base_sock)
    try:
        results.append(
            await run(base_sock.getsockname()[1], mesh_queries(), seconds, "baseline: asyncio constant reply")
        )
    finally:
        transport.close()

    server = DnsServer(build_zone(), [("127.0.0.1", 0)])
    await server.start()
    try:
        port = server.addresses[0][1]
        results.append(await run(port, mesh_queries(), seconds, "MagicDNS A/AAAA mesh names"))
        results.append(await run(port, nxdomain_queries(), seconds, "MagicDNS NXDOMAIN, random names"))
    finally:
        await server.stop()
    return results


def print_table(results: list[Result], generator: str) -> None:
    base = results[0].qps or 1.0
    print(f"\nload generator: {generator}, {OUTSTANDING} queries outstanding, CPUs: {os.cpu_count()}")
    print(f"q/s: flat out; p50/p99: latency with {GOAL_QPS} q/s offered")
    print(f"{'case':40} {'q/s':>10} {'vs base':>8} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6}")
    for r in results:
        print(f"{r.name:40} {r.qps:10.0f} {r.qps / base:8.2f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.lost:6d}")
    mesh = results[1]
    verdict = "met" if mesh.qps >= GOAL_QPS else "NOT met"
    print(f"\ngoal >= {GOAL_QPS} q/s for mesh names: {verdict} ({mesh.qps:.0f} q/s, p99 {mesh.p99_ms:.2f} ms)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-generator":
        generator_main(int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--generator", choices=["auto", "dnsperf", "builtin"], default="auto")
    args = parser.parse_args()
    gen = args.generator
    if gen == "auto":
        gen = "dnsperf" if shutil.which("dnsperf") else "builtin"
    print_table(asyncio.run(main(args.seconds, gen)), gen)
