#!/usr/bin/env python3
"""MagicDNS under a query flood: what each kind of asker costs the server (issue 23).

In a network namespace of its own (root), meshctl's DnsServer runs as node "node000"
(100.64.0.1:53, a 250-member zone) and a flooder process sends --rate queries/s for mesh names
for --seconds from one address at a time:

- the node itself (127.0.0.1): answered, not limited (as every query was before issue 23);
- a member (100.64.0.2): its token bucket (100 q/s, burst 200), the rest dropped unread;
- a stranger (192.0.2.9): dropped unread, before the query is parsed.

The server's CPU is this process's own (getrusage), the flooder's is not in it.

    sudo .venv/bin/python bench/dns_flood.py [--rate 5000] [--seconds 10]

Goal: a flood costs bounded CPU (issue 23 measured 66 % of a core answering 5,000 q/s from a
neighbour); members and strangers cost a fraction of what answering costs.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dns_qps import build_zone  # noqa: E402
from meshctl.dns.server import DnsServer  # noqa: E402

CLONE_NEWNET = 0x40000000
OWN, MEMBER, STRANGER = "100.64.0.1", "100.64.0.2", "192.0.2.9"
ASKERS = (("the node itself", "127.0.0.1"), ("a member", MEMBER), ("a stranger", STRANGER))

FLOODER = r"""
import socket, sys, time
src, dst, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
query = bytes.fromhex(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setblocking(False)
def replies():
    n = 0
    try:
        while True:
            s.recv(4096)
            n += 1
    except BlockingIOError:
        return n
sent = answered = 0
start = time.monotonic()
while (elapsed := time.monotonic() - start) < seconds:
    while sent < int(elapsed * rate) + 1:
        s.sendto((sent & 0xFFFF).to_bytes(2, "big") + query[2:], (dst, 53))
        sent += 1
    answered += replies()
    time.sleep(0.001)
time.sleep(0.3)
print(sent, answered + replies())
"""


def own_namespace() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise SystemExit(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())} (run as root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for addr in (OWN, MEMBER, STRANGER):
        subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", "lo"], check=True)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def flood(server: DnsServer, src: str, rate: int, seconds: float) -> tuple[int, int, float]:
    import dnslib

    query = bytes(dnslib.DNSRecord.question("node007.example.mesh", "A").pack())
    before, t0 = cpu_s(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-S", "-c", FLOODER, src, OWN, str(rate),
                                                str(seconds), query.hex(), stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    took = time.monotonic() - t0
    sent, answered = (int(x) for x in out.split())
    return sent, answered, 100 * (cpu_s() - before) / took


async def main(rate: int, seconds: float) -> None:
    zone = build_zone()
    me = zone.hosts[0][1]
    from dataclasses import replace

    zone = replace(zone, own=(*me, *zone.own))  # node000 is this node
    server = DnsServer(zone, [(OWN, 53)])
    await server.start()
    rows = []
    try:
        idle_before, t0 = cpu_s(), time.monotonic()
        await asyncio.sleep(seconds / 2)
        rows.append(("idle", 0, 0, 100 * (cpu_s() - idle_before) / (time.monotonic() - t0)))
        for name, src in ASKERS:
            sent, answered, pct = await flood(server, src, rate, seconds)
            rows.append((name, sent, answered, pct))
            print(f"  {name:<16} sent {sent}, answered {answered}, server {pct:.1f} % of a core", flush=True)
    finally:
        await server.stop()
    print(f"\nMagicDNS on {OWN}:53, {rate} queries/s for {seconds:g} s from one address each; "
          "server CPU in % of one core")
    print(f"{'asker':<16} {'sent/s':>7} {'answered':>9} {'server %':>9}")
    for name, sent, answered, pct in rows:
        print(f"{name:<16} {sent / seconds:>7.0f} {answered:>9d} {pct:>9.1f}")
    st = server.stats
    print(f"server counters: queries {st.queries}, answered {st.answered}, rate limited {st.rate_limited}, "
          f"strangers {st.strangers}")
    load1, load5, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.1f} (1 min) {load5:.1f} (5 min)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    own_namespace()
    asyncio.run(main(args.rate, args.seconds))
