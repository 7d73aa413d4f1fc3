"""Shared bits of the data-plane benchmarks (bench/dataplane_*.py): paths, tables, timing.

Not a benchmark itself. The benchmarks build their meshes with the network lab
(lab) and the helpers of the end-to-end tests (tests/e2e/e2e_support.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "e2e"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

if TYPE_CHECKING:
    from lab import Lab, Node


def require_root() -> None:
    from lab import lab_unavailable

    reason = lab_unavailable()
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
