#!/usr/bin/env python3
"""Throughput through a meshctl tunnel vs the same backend configured by hand (root).

Two lab hosts on one LAN. Between them, in the same run and on the same veth path:
- "meshctl": the mesh built by meshctl (init, join, approve, `meshctl up` on both: agents
  running, their NAT-traversal socket and nft table in place);
- "by hand": a second wireguard-go pair configured with `wg set` and `ip` only.
iperf3 (TCP, one stream) runs through each in alternating rounds; the table shows the median
and the ratio meshctl / by hand. Goal (issue 3): >= 0.95, meshctl adds nothing to the data path.
The agents' CPU time during the meshctl rounds is shown too (it should stay near zero).

    sudo .venv/bin/python bench/dataplane_throughput.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import hand_keys, hand_side, load_note, median, require_root, table  # noqa: E402
from procstat import cpu_seconds  # noqa: E402

GOAL_RATIO = 0.95
HAND_PORT = 51900
HAND_NET = "10.77.0"
IPERF_PORT = 5201


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="length of one iperf3 run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per tunnel")
    args = ap.parse_args()
    require_root("iperf3", "wireguard-go", "wg")

    from e2e_support import agent_pid, interface, meshctl_up

    from lab import open_lab
    from lab.scenario import build_lan_mesh

    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 2)
        for member in mesh.members.values():
            meshctl_up(lab, member.node)
        a, b = mesh.members["node1"].node, mesh.members["node2"].node

        # The baseline: wireguard-go configured by hand on the same two hosts.
        hand = {a: lab.ifname("hand"), b: lab.ifname("hand")}
        keys = {a: hand_keys(lab, a), b: hand_keys(lab, b)}
        ips = {a: f"{HAND_NET}.1", b: f"{HAND_NET}.2"}
        for node, other in ((a, b), (b, a)):
            hand_side(lab, node, hand[node], keys[node][0], HAND_PORT, ips[node], keys[other][1], ips[other],
                      f"{other.ipv4}:{HAND_PORT}")
        try:
            lab.popen(b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
            targets = {"meshctl": mesh.members["node2"].mesh_ipv4, "by hand": f"{HAND_NET}.2"}
            mtus = {"meshctl": interface(lab, a), "by hand": hand[a]}
            for name, ifname in mtus.items():
                link = json.loads(lab.run(a, ["ip", "-j", "link", "show", ifname]).stdout)[0]
                mtus[name] = str(link["mtu"])
            agents = [p for p in (agent_pid(lab, a), agent_pid(lab, b)) if p is not None]
            results: dict[str, list[float]] = {name: [] for name in targets}
            agent_cpu = 0.0
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name in order:
                    before = sum(cpu_seconds(p) for p in agents)
                    for _ in range(20):  # the server may still be starting
                        proc = lab.run(a, ["iperf3", "-c", targets[name], "-p", str(IPERF_PORT), "-t",
                                           str(args.seconds), "-J"], check=False, timeout=args.seconds + 60)
                        if proc.returncode == 0:
                            break
                    else:
                        sys.exit(f"iperf3 through {name} failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
                    bps = json.loads(proc.stdout)["end"]["sum_received"]["bits_per_second"]
                    if name == "meshctl":
                        agent_cpu += sum(cpu_seconds(p) for p in agents) - before
                    results[name].append(bps / 1e6)
        finally:
            for node in (a, b):
                lab.run(node, ["ip", "link", "del", hand[node]], check=False)  # wireguard-go exits

    rows = []
    for name, values in results.items():
        rows.append([name, mtus[name], f"{median(values):.0f}", " ".join(f"{v:.0f}" for v in values)])
    ratio = median(results["meshctl"]) / median(results["by hand"])
    print(f"iperf3 TCP, {args.rounds} x {args.seconds} s per tunnel, wireguard-go on both ends; {load_note()}")
    print(table(["tunnel", "MTU", "median Mbit/s", "runs Mbit/s"], rows))
    print(f"ratio meshctl / by hand: {ratio:.3f} (goal >= {GOAL_RATIO}) "
          f"{'OK' if ratio >= GOAL_RATIO else 'MISSED'}")
    print(f"agents' CPU during the meshctl runs: {agent_cpu:.2f} s over {args.rounds * args.seconds} s")


if __name__ == "__main__":
    main()
