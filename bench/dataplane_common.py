"""Shared bits of the data-plane benchmarks (bench/dataplane_*.py): paths, tables, timing.

Not a benchmark itself. The benchmarks build their meshes with the network lab
(lab) and the helpers of the end-to-end tests (tests/e2e/e2e_support.py).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "e2e"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

if TYPE_CHECKING:
    from lab import Lab, Node


def require_root(*tools: str) -> None:
    """Exit with the reason unless the lab runs here with `tools` on PATH (named with their package)."""
    from lab import lab_unavailable

    reason = lab_unavailable(tools)
    if reason:
        sys.exit(f"cannot run: {reason}")


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_note() -> str:
    """The machine's load while the benchmark ran: figures on a busy box are pessimistic."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.1f} (1 min) {five:.1f} (5 min)"


def load_average() -> float:
    return os.getloadavg()[0]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- a WireGuard tunnel configured by hand (the baseline: no meshctl at all) --------------------


def hand_keys(lab: Lab, node: Node) -> tuple[Path, str]:
    """A fresh WireGuard key pair made with `wg`: (private key file, public key)."""
    priv = lab.run(node, ["wg", "genkey"]).stdout.strip()
    keyfile = lab.tempdir("hand") / f"{node.name}-{priv[:6].replace('/', '_')}.key"
    keyfile.write_text(priv + "\n")
    keyfile.chmod(0o600)
    return keyfile, lab.run(node, ["wg", "pubkey"], input=priv + "\n").stdout.strip()


def hand_side(lab: Lab, node: Node, ifname: str, keyfile: Path, port: int, address: str,
              peer_public: str, peer_address: str, peer_endpoint: str) -> None:
    """`wireguard-go IF`, `wg set`, `ip addr`, `ip link up`, `ip route`: what a person types."""
    run = lab.run
    # In a session of its own, as meshctl starts it (and as any daemon runs): with the kernel's
    # scheduler autogroups, a wireguard-go left in the benchmark's session shares the CPU with
    # iperf3 differently, which alone moved the throughput ratio by 10 % on this machine.
    run(node, ["setsid", "--wait", "wireguard-go", ifname])
    run(node, ["wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(port),
               "peer", peer_public, "allowed-ips", f"{peer_address}/32", "endpoint", peer_endpoint])
    run(node, ["ip", "addr", "add", f"{address}/32", "dev", ifname])
    run(node, ["ip", "link", "set", ifname, "up"])
    run(node, ["ip", "route", "add", f"{peer_address}/32", "dev", ifname])


# --- the first echo reply through a tunnel ------------------------------------------------------

# Runs in a node's namespace: an ICMP echo every 10 ms, prints the monotonic time of the first
# reply (CLOCK_MONOTONIC is shared by all network namespaces). Sending fails with "no route"
# until the tunnel's interface exists; that is expected.
PROBER: Final = r"""
import os, select, socket, struct, sys, time
dst, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
ident = os.getpid() & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def packet(seq):
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"meshctl-bench!"  # even length
    total = sum(struct.unpack(f"!{len(head) // 2}H", head))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return head[:2] + struct.pack("!H", ~total & 0xFFFF) + head[4:]
print("ready", flush=True)
seq = 0
while time.monotonic() < deadline:
    seq = (seq + 1) & 0xFFFF
    try:
        s.sendto(packet(seq), (dst, 0))
    except OSError:
        pass  # no route to the tunnel yet
    end = time.monotonic() + 0.01
    while (left := end - time.monotonic()) > 0:
        if select.select([s], [], [], left)[0]:
            data = s.recv(2048)
            ihl = (data[0] & 15) * 4
            if data[ihl] == 0 and struct.unpack("!H", data[ihl + 4:ihl + 6])[0] == ident:
                print(time.monotonic(), flush=True)
                sys.exit(0)
sys.exit(1)
"""


def start_prober(lab: Lab, node: Node, dst: str, timeout_s: float) -> subprocess.Popen[str]:
    """Start pinging `dst` from `node` every 10 ms; returns once the prober is ready."""
    prober = lab.popen(node, [sys.executable, "-c", PROBER, dst, str(timeout_s)], stdout=subprocess.PIPE)
    assert prober.stdout is not None
    if prober.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the prober in {node.name} did not start: {lab.log_of(prober)}")
    return prober


def prober_reply(prober: subprocess.Popen[str], timeout_s: float) -> float | None:
    """The monotonic time of the first echo reply, or None when none came before the prober gave up."""
    assert prober.stdout is not None
    line = prober.stdout.readline().strip()
    try:
        code = prober.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None
    return float(line) if code == 0 and line else None


# --- iperf3 --------------------------------------------------------------------------------------

IPERF_PORT: Final = 5201


@dataclass(frozen=True, slots=True)
class IperfRun:
    bits_per_second: float  # received, as iperf3's summary says
    bytes: int  # received
    seconds: float  # wall time of the client, start-up included


def iperf3(lab: Lab, client: Node, server_ip: str, seconds: float, *, reverse: bool = False,
           port: int = IPERF_PORT) -> IperfRun:
    """One TCP iperf3 run from `client` to an `iperf3 -s` listening on `server_ip` (-R: the other way)."""
    argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", f"{seconds:g}", "-J", "--connect-timeout", "5000"]
    if reverse:
        argv.append("-R")
    start = time.monotonic()
    proc = lab.run(client, argv, check=False, timeout=seconds + 30)
    wall = time.monotonic() - start
    try:
        doc = json.loads(proc.stdout)
        summary = doc["end"]["sum_received"]
        return IperfRun(float(summary["bits_per_second"]), int(summary["bytes"]), wall)
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 to {server_ip} failed: {(proc.stderr or proc.stdout)[-300:]}") from exc
