#!/usr/bin/env python3
"""Throughput through the mesh tunnel with meshctl's nft filter vs the same tunnel without it.

A two-node mesh is built in the network lab as a person would (init, join, approve with
a tag and an owner, a zero-trust policy signed into the repository, `meshctl up`): the
client laptop (owner dana, group:dev) may reach the server (tag:prod) on iperf3's port
only. iperf3 runs over the WireGuard tunnel (the nodes' mesh addresses). Rounds
alternate two set-ups on the same tunnel, in the same run:

- filter:    table inet meshctl as the agent applied it (checked by reading it back);
- no filter: that table deleted on both nodes (the baseline).

The agents sync once an hour here, so they do not put the table back mid-run.

    sudo .venv/bin/python bench/acl_throughput.py [--rounds 5] [--seconds 5] [--parallel 1]

Goal (issue 6): ratio filter / no filter at least 0.97.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshctl.firewall.apply import read_table  # noqa: E402
from meshctl.lab import Lab, LabError, Node, lab_unavailable, open_lab  # noqa: E402
from meshctl.lab.scenario import MeshScenario, build_lan_mesh  # noqa: E402

GOAL_RATIO = 0.97
IPERF_PORT = 5201
OMIT_S = 1  # iperf3 -O: leave out TCP slow start
SYNC_INTERVAL_S = "3600"
NAMES = ("laptop", "server")
POLICY = f"""// acl_throughput: the laptop may reach the server's iperf3 port, nothing else.
{{
	"groups": {{"group:dev": ["dana@example.com"]}},
	"tagOwners": {{"tag:prod": ["group:dev"]}},
	"acls": [
		{{"action": "accept", "src": ["group:dev"], "dst": ["tag:prod:{IPERF_PORT}"]}},
	],
	"tests": [
		{{"src": "dana@example.com", "accept": ["tag:prod:{IPERF_PORT}"], "deny": ["tag:prod:22"]}},
	],
}}
"""


@dataclass(frozen=True, slots=True)
class Run:
    mode: str
    bits_per_second: float
    retransmits: int


class FilterSwitch:
    """Removes and restores meshctl's table on the nodes, byte-exact with what the agent applied."""

    def __init__(self, lab: Lab, nodes: list[Node]) -> None:
        self.lab = lab
        self.nodes = nodes
        self.saved = {n.ns: lab.run(n, ["nft", "list", "table", "inet", "meshctl"]).stdout for n in nodes}
        self.objects = {n.ns: read_table(n.ns) for n in nodes}

    def set(self, enabled: bool) -> None:
        for node in self.nodes:
            if enabled:
                if read_table(node.ns) is None:
                    self.lab.run(node, ["nft", "-f", "-"], input=self.saved[node.ns])
                if read_table(node.ns) != self.objects[node.ns]:
                    raise LabError(f"{node.name}: the restored table differs from meshctl's")
            else:
                self.lab.run(node, ["nft", "delete", "table", "inet", "meshctl"], check=False)
                if read_table(node.ns) is not None:
                    raise LabError(f"{node.name}: table inet meshctl is still there")


def iperf(lab: Lab, client: Node, server_ip: str, seconds: int, parallel: int, mode: str) -> Run:
    proc = lab.run(client, ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", str(OMIT_S),
                            "-P", str(parallel), "-J"], check=False, timeout=seconds + 30)
    doc = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "error" in doc:
        raise LabError(f"iperf3 ({mode}) failed: {doc.get('error') or proc.stderr.strip()}")
    end = doc["end"]
    return Run(mode, float(end["sum_received"]["bits_per_second"]), int(end["sum_sent"].get("retransmits", 0)))


def build(lab: Lab) -> MeshScenario:
    mesh = build_lan_mesh(lab, 2, name="bench", names=NAMES,
                          approve_args={"laptop": ["--owner", "dana@example.com"], "server": ["--tag", "tag:prod"]})
    mesh.set_policy(POLICY)
    for name in NAMES:
        mesh.up(name, "--sync-interval", SYNC_INTERVAL_S)
    return mesh


def measure(mesh: MeshScenario, rounds: int, seconds: int, parallel: int) -> list[Run]:
    lab = mesh.lab
    client, server = mesh.members["laptop"].node, mesh.members["server"].node
    server_ip = mesh.members["server"].mesh_ipv4
    lab.popen(server, ["iperf3", "-s", "-B", server_ip, "-p", str(IPERF_PORT)])
    switch = FilterSwitch(lab, [client, server])
    deadline = time.monotonic() + 10
    while lab.run(client, ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", "1"], check=False).returncode:
        if time.monotonic() > deadline:  # also warms up the tunnel (handshake done)
            raise LabError("iperf3 server did not answer through the tunnel")
        time.sleep(0.2)
    runs = []
    for i in range(rounds):
        # Alternate which set-up goes first, so a drift over time hits both equally.
        order = (True, False) if i % 2 == 0 else (False, True)
        for enabled in order:
            switch.set(enabled)
            mode = "filter" if enabled else "no filter"
            run = iperf(lab, client, server_ip, seconds, parallel, mode)
            print(f"  round {i + 1}: {mode:9s} {run.bits_per_second / 1e9:6.3f} Gbit/s", flush=True)
            runs.append(run)
    switch.set(True)
    # Still enforcing: a port the policy does not allow gets no answer.
    probe = lab.run(client, ["iperf3", "-c", server_ip, "-p", "22", "-t", "1", "--connect-timeout", "1000"],
                    check=False)
    if probe.returncode == 0:
        raise LabError("the filter did not block port 22 after the run")
    return runs


def print_table(runs: list[Run], rounds: int, seconds: int, parallel: int) -> None:
    by_mode: dict[str, list[Run]] = {}
    for run in runs:
        by_mode.setdefault(run.mode, []).append(run)
    print()
    print(f"iperf3 TCP over the WireGuard tunnel (wireguard-go), {rounds} rounds x {seconds} s, -P {parallel}")
    print(f"{'set-up':<10} {'median Gbit/s':>14} {'min':>8} {'max':>8} {'retransmits':>12}")
    medians = {}
    for mode in ("no filter", "filter"):
        rs = by_mode[mode]
        rates = [r.bits_per_second / 1e9 for r in rs]
        medians[mode] = statistics.median(rates)
        print(f"{mode:<10} {medians[mode]:>14.3f} {min(rates):>8.3f} {max(rates):>8.3f} "
              f"{sum(r.retransmits for r in rs):>12d}")
    ratio = medians["filter"] / medians["no filter"]
    # Each round measures both set-ups back to back: the per-round ratio cancels slow drift
    # (other load on the machine), so its median is the steadier figure.
    paired = [f.bits_per_second / n.bits_per_second for f, n in zip(by_mode["filter"], by_mode["no filter"],
                                                                     strict=True)]
    print(f"ratio filter / no filter (medians): {ratio:.3f}")
    print(f"ratio per round: {' '.join(f'{r:.2f}' for r in paired)}; median {statistics.median(paired):.3f} "
          f"(goal >= {GOAL_RATIO}: {'met' if statistics.median(paired) >= GOAL_RATIO else 'NOT met'})")
    load1, load5, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.1f} (1 min) {load5:.1f} (5 min); "
          "other load makes single rounds vary")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    reason = lab_unavailable()
    for tool in ("iperf3", "wireguard-go", "wg", "git"):
        if reason is None and shutil.which(tool) is None:
            reason = f"this benchmark needs `{tool}`"
    if reason:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    with open_lab() as lab:
        mesh = build(lab)
        try:
            runs = measure(mesh, args.rounds, args.seconds, args.parallel)
        finally:
            for name in NAMES:
                mesh.meshctl(name, "down", check=False)
    print_table(runs, args.rounds, args.seconds, args.parallel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
