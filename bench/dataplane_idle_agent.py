#!/usr/bin/env python3
"""The idle agent: CPU (% of one core), wakeups and RSS over a quiet minute, 1 peer and N peers (root).

Two LAN meshes in one run, each in its own lab: a baseline of 2 devices (each agent has 1 peer)
and one of --peers + 1 devices (each agent has --peers peers, 10 by default). All agents are
started with `meshctl up`; once every path is direct and --settle s have passed, every agent is
watched at the same time for --seconds (default 60: one sync interval included): CPU time from
/proc (nanoseconds from schedstat, procstat.py), wakeups as the times its threads went to sleep
(voluntary context switches), RSS sampled every second. For scale, node1's wireguard-go of each mesh and a bare
`python -c 'sleep'` of the same interpreter (its RSS is the floor any Python agent pays; its CPU
is its start-up).
Goals: issue 22, <= 0.25 % of one core per agent with ten peers (Nebula: 0.29); issue 3,
<= 60 MB RSS.

    sudo .venv/bin/python bench/dataplane_idle_agent.py [--peers 10] [--seconds 60] [--settle 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import load_note, require_root, table  # noqa: E402
from procstat import read_cpu, read_rss_kib, read_wakeups, tree_cpu_used  # noqa: E402

if TYPE_CHECKING:
    from lab.scenario import MeshScenario

GOAL_CPU_PCT = 0.25
GOAL_RSS_MB = 60.0
DIRECT_TIMEOUT_S = 90.0


@dataclass(frozen=True, slots=True)
class Watched:
    mesh: str  # "1 peer" / "10 peers"
    name: str  # node name, or the process's role
    pid: int
    agent: bool


def wait_direct(mesh: MeshScenario, timeout_s: float) -> float:
    """Seconds until every member sees every other on a direct path (raises after `timeout_s`)."""
    start = time.monotonic()
    while True:
        missing = []
        for name in mesh.members:
            paths = {p.get("name"): p.get("path") for p in mesh.status(name).get("peers") or []}
            missing += [f"{name}->{peer}" for peer in mesh.members if peer != name and paths.get(peer) != "direct"]
        if not missing:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"not direct after {timeout_s:g} s: {' '.join(missing[:10])}")
        time.sleep(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10, help="peers of each agent in the big mesh (default 10)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0, help="wait after every path is direct")
    args = ap.parse_args()
    if args.peers < 2 or args.seconds <= 0 or args.settle < 0:
        ap.error("--peers must be at least 2, --seconds positive, --settle not negative")
    require_root()

    from e2e_support import agent_pid, interface

    from lab import open_lab
    from lab.scenario import build_lan_mesh
    from meshctl.wg.userspace import find_wireguard_go

    labels = {1: "1 peer", args.peers: f"{args.peers} peers"}
    with contextlib.ExitStack() as stack:
        meshes = {}
        for peers in labels:
            lab = stack.enter_context(open_lab())
            mesh = build_lan_mesh(lab, peers + 1)
            mesh.up_together(list(mesh.members))
            meshes[peers] = (lab, mesh)
        waited = {peers: wait_direct(mesh, DIRECT_TIMEOUT_S) for peers, (_, mesh) in meshes.items()}
        time.sleep(args.settle)

        watched: list[Watched] = []
        for peers, (lab, mesh) in meshes.items():
            for name, member in mesh.members.items():
                pid = agent_pid(lab, member.node)
                if pid is None:
                    sys.exit(f"the agent of {name} ({labels[peers]}) is not running")
                watched.append(Watched(labels[peers], name, pid, agent=True))
            node1 = mesh.members["node1"].node
            wg = find_wireguard_go(interface(lab, node1))
            if wg is not None:
                watched.append(Watched(labels[peers], "node1 wireguard-go", wg, agent=False))
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1e6)"])
        watched.append(Watched("-", "bare python (floor)", bare.pid, agent=False))
        try:
            cpu0 = {w.pid: read_cpu(w.pid) for w in watched}
            wakeups0 = {w.pid: read_wakeups(w.pid) for w in watched}
            rss: dict[int, list[float]] = {w.pid: [] for w in watched}
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                for w in watched:
                    rss[w.pid].append(read_rss_kib(w.pid) / 1024)
                time.sleep(1.0)
            elapsed = time.monotonic() - start
            cpu1 = {w.pid: read_cpu(w.pid) for w in watched}
            wakeups1 = {w.pid: read_wakeups(w.pid) for w in watched}
        finally:
            bare.kill()
            bare.wait()
        serials = {labels[p]: (mesh.status("node1").get("coordination") or {}).get("serial")
                   for p, (_, mesh) in meshes.items()}

    def pct(w: Watched) -> float:
        before, after = cpu0[w.pid], cpu1[w.pid]
        if before is None or after is None:
            return float("nan")
        return tree_cpu_used({w.pid: before}, {w.pid: after}) / elapsed * 100

    rows = [[w.mesh, w.name, f"{pct(w):.3f}", f"{(wakeups1[w.pid] - wakeups0[w.pid]) / elapsed:.1f}",
             f"{max(rss[w.pid]):.1f}"] for w in watched]
    to_direct = ", ".join(f"{labels[p]}: {s:.0f} s" for p, s in waited.items())
    print(f"{elapsed:.0f} s idle after every path was direct ({to_direct} to direct, then {args.settle:g} s); "
          f"LAN meshes, sync every 60 s, serials {serials}; {load_note()}")
    print(table(["mesh", "process", "CPU % of one core", "wakeups/s", "RSS max (MB)"], rows))
    summary = []
    for label in labels.values():
        agents = [w for w in watched if w.agent and w.mesh == label]
        summary.append((label, statistics.median(pct(w) for w in agents), max(pct(w) for w in agents),
                        statistics.median((wakeups1[w.pid] - wakeups0[w.pid]) / elapsed for w in agents)))
    for label, median, worst, wakeups in summary:
        print(f"agents with {label}: CPU median {median:.3f} % (worst {worst:.3f} %), {wakeups:.1f} wakeups/s")
    base, big = summary[0], summary[-1]
    rss_ok = max(max(rss[w.pid]) for w in watched if w.agent) <= GOAL_RSS_MB
    print(f"{big[0]} / 1 peer: CPU x{big[1] / base[1]:.2f}, wakeups x{big[3] / base[3]:.2f}; "
          f"goal <= {GOAL_CPU_PCT} % per agent with {big[0]} (median, as bench/peers.py): "
          f"{'OK' if big[1] <= GOAL_CPU_PCT else 'MISSED'}; "
          f"RSS goal <= {GOAL_RSS_MB:g} MB: {'OK' if rss_ok else 'MISSED'}")


if __name__ == "__main__":
    main()
