#!/usr/bin/env python3
"""The idle agent: CPU (% of one core) and RSS over a quiet minute (root).

Three lab hosts on a LAN, `meshctl up` on each. After the agents' first passes settle, node1's
agent is watched for --seconds (default 60, one sync timer included): CPU time from
/proc/PID/stat, RSS sampled every second from /proc/PID/status. For scale, the same figures for
node1's wireguard-go and for a bare `python -c 'sleep'` of the same interpreter (its RSS is
the floor any Python agent pays).
Goals (issue 3): <= 0.5 % of one core and <= 60 MB RSS.

    sudo .venv/bin/python bench/dataplane_idle_agent.py [--seconds 60] [--settle 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import load_note, require_root, table  # noqa: E402
from procstat import cpu_seconds as cpu_s  # noqa: E402
from procstat import read_rss_kib  # noqa: E402

GOAL_CPU_PCT = 0.5
GOAL_RSS_MB = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0, help="wait after the agents start")
    args = ap.parse_args()
    require_root()

    from e2e_support import agent_pid, interface, meshctl_up

    from lab import open_lab
    from lab.scenario import build_lan_mesh
    from meshctl.wg.userspace import find_wireguard_go

    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 3)
        for member in mesh.members.values():
            meshctl_up(lab, member.node)
        node = mesh.members["node1"].node
        time.sleep(args.settle)
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1e6)"])
        watched = {"meshctl agent": agent_pid(lab, node), "wireguard-go": find_wireguard_go(interface(lab, node)),
                   "bare python (floor)": bare.pid}
        pids = {name: pid for name, pid in watched.items() if pid is not None}
        if "meshctl agent" not in pids:
            sys.exit("the agent is not running")
        try:
            start_cpu = {name: cpu_s(pid) for name, pid in pids.items()}
            rss: dict[str, list[float]] = {name: [] for name in pids}
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                for name, pid in pids.items():
                    rss[name].append(read_rss_kib(pid) / 1024)
                time.sleep(1.0)
            elapsed = time.monotonic() - start
            cpu = {name: (cpu_s(pid) - start_cpu[name]) / elapsed * 100 for name, pid in pids.items()}
        finally:
            bare.kill()
            bare.wait()
        passes = (mesh.status("node1").get("coordination") or {}).get("serial")

    rows = [[name, f"{cpu[name]:.2f}", f"{max(rss[name]):.1f}", f"{min(rss[name]):.1f}"] for name in pids]
    print(f"{elapsed:.0f} s idle, 2 peers, sync every 60 s (serial {passes}); {load_note()}")
    print(table(["process", "CPU % of one core", "RSS max (MB)", "RSS min (MB)"], rows))
    ok_cpu, ok_rss = cpu["meshctl agent"] <= GOAL_CPU_PCT, max(rss["meshctl agent"]) <= GOAL_RSS_MB
    print(f"agent CPU {cpu['meshctl agent']:.2f} % (goal <= {GOAL_CPU_PCT} %) {'OK' if ok_cpu else 'MISSED'}; "
          f"RSS {max(rss['meshctl agent']):.1f} MB (goal <= {GOAL_RSS_MB:g} MB) {'OK' if ok_rss else 'MISSED'}")


if __name__ == "__main__":
    main()
