#!/usr/bin/env python3
"""Throughput through a subnet router vs to the router itself, in the same run (root; issue 19).

lab.topology.RoutedSite with agents up (client-a accepts routes). iperf3 (TCP, one stream) from
client-a in alternating rounds:
- "to the router": r1's own mesh address (the tunnel alone);
- "through the router": the LAN host behind r1 (the tunnel, then forwarding, the routed policy,
  MSS clamping and SNAT on r1, then r1's LAN).
The table shows the medians and the ratio; goal (issue 19) >= 0.9: routing adds little to the tunnel.

    sudo .venv/bin/python bench/routes_throughput.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import load_note, median, require_root, table  # noqa: E402

GOAL_RATIO = 0.9
IPERF_PORT = 5201
LANHOST = "192.168.50.12"


def _received_mbps(text: str) -> float | None:
    """iperf3 -J's receiver rate; None for a run that reports an error instead."""
    try:
        return float(json.loads(text)["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError, TypeError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="length of one iperf3 run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per target")
    args = ap.parse_args()
    require_root("iperf3", "wireguard-go", "wg", "nft")

    from lab import open_lab
    from lab.scenario import build_routed_mesh

    with open_lab() as lab:
        mesh, site = build_routed_mesh(lab)
        try:
            for name in ("r1", "r2", "ex", "client-b"):
                mesh.up(name)
            mesh.up("client-a", "--accept-routes")
            lab.popen(site.lanhost, ["iperf3", "-s", "-p", str(IPERF_PORT)])
            lab.popen(site.r1, ["iperf3", "-s", "-p", str(IPERF_PORT)])
            targets = {"to the router": mesh.members["r1"].mesh_ipv4, "through the router": LANHOST}
            results: dict[str, list[float]] = {name: [] for name in targets}
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name in order:
                    for _ in range(20):  # a server may still be starting, or busy with the last run
                        proc = lab.run(site.client_a, ["iperf3", "-c", targets[name], "-p", str(IPERF_PORT), "-t",
                                                       str(args.seconds), "-J"], check=False,
                                       timeout=args.seconds + 60)
                        received = _received_mbps(proc.stdout) if proc.returncode == 0 else None
                        if received is not None:
                            break
                        time.sleep(1)
                    else:
                        sys.exit(f"iperf3 {name} failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
                    results[name].append(received)
        finally:
            for member in mesh.members.values():
                lab.meshctl(member.node, ["down"], check=False)

    rows = [[name, f"{median(v):.0f}", " ".join(f"{x:.0f}" for x in v)] for name, v in results.items()]
    ratio = median(results["through the router"]) / median(results["to the router"])
    print(f"iperf3 TCP from client-a, {args.rounds} x {args.seconds} s per target, wireguard-go; {load_note()}")
    print(table(["target", "median Mbit/s", "runs Mbit/s"], rows))
    verdict = "OK" if ratio >= GOAL_RATIO else "MISSED"
    print(f"ratio through / to the router: {ratio:.3f} (goal >= {GOAL_RATIO}) {verdict}")


if __name__ == "__main__":
    main()
