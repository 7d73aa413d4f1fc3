#!/usr/bin/env python3
"""From `meshctl up` to the first ping answered over the mesh, on a LAN (root).

Two lab hosts; node2's agent runs. Each trial on node1: `meshctl down`, then a prober already
running in node1's namespace sends an ICMP echo to node2's mesh address every 10 ms (it fails
with "no route" until meshctl has configured the interface), and `meshctl up` starts; the
figure is the time to the first echo reply. In the same run, for comparison:
- `meshctl sync` (the cron path: one pass, no agent to spawn) to the first reply;
- the same tunnel typed by hand (`wireguard-go`, `wg set`, `ip`): the floor for wireguard-go;
- `meshctl version`: the interpreter and CLI start-up alone.
Goal (issue 3): `meshctl up` to first reply <= 1 s.

    sudo .venv/bin/python bench/dataplane_up_latency.py [--trials 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import (  # noqa: E402
    ROOT,
    hand_keys,
    hand_side,
    load_note,
    median,
    prober_reply,
    require_root,
    start_prober,
    table,
    timed,
)

GOAL_S = 1.0
PROBE_TIMEOUT_S = 30.0
HAND_PORT = 51900


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    require_root()

    from e2e_support import meshctl_up

    from lab import Lab, Node, meshctl_argv, open_lab
    from lab.scenario import build_lan_mesh

    def first_reply(lab: Lab, node: Node, dst: str, action: list[str], env: dict[str, str]) -> tuple[float, float]:
        """(seconds until `action` exits, seconds until the first echo reply), from its start."""
        prober = start_prober(lab, node, dst, PROBE_TIMEOUT_S)
        start = time.monotonic()
        proc = subprocess.run(["ip", "netns", "exec", node.ns, *action], env=env, capture_output=True, text=True)
        exited = time.monotonic() - start
        if proc.returncode != 0:
            sys.exit(f"{' '.join(action)} failed: {proc.stderr.strip()}")
        reply = prober_reply(prober, PROBE_TIMEOUT_S)
        if reply is None:
            sys.exit(f"no echo reply from {dst} within {PROBE_TIMEOUT_S:g} s after {' '.join(action)}")
        return exited, reply - start

    rows = []
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 2)
        a, b = mesh.members["node1"].node, mesh.members["node2"].node
        meshctl_up(lab, b)
        meshctl_up(lab, a)  # the first start (clones, keys) is not what a user waits for daily
        dst = mesh.members["node2"].mesh_ipv4
        env = {**os.environ, **lab.meshctl_env(a), "PYTHONPATH": str(ROOT)}
        cases: dict[str, list[tuple[float, float]]] = {"meshctl up": [], "meshctl sync": []}
        for _ in range(args.trials):
            for name, verb in (("meshctl up", "up"), ("meshctl sync", "sync")):
                lab.meshctl(a, ["down"])
                time.sleep(0.5)  # let node2 notice nothing; a fresh handshake each time
                cases[name].append(first_reply(lab, a, dst, [*meshctl_argv(), verb], env))
        lab.meshctl(a, ["down"])
        lab.meshctl(b, ["down"])

        # By hand, same hosts, a second tunnel: node2's side first (not timed), then node1's.
        hand_times = []
        for _ in range(args.trials):
            ifa, ifb = lab.ifname("hand"), lab.ifname("hand")
            (ka, pa), (kb, pb) = hand_keys(lab, a), hand_keys(lab, b)
            hand_side(lab, b, ifb, kb, HAND_PORT, "10.77.0.2", pa, "10.77.0.1", f"{a.ipv4}:{HAND_PORT}")
            script = Path(lab.tempdir("hand")) / "up.sh"
            script.write_text(
                f"wireguard-go {ifa}\n"
                f"wg set {ifa} private-key {ka} listen-port {HAND_PORT} peer {pb} allowed-ips 10.77.0.2/32 "
                f"endpoint {b.ipv4}:{HAND_PORT}\n"
                f"ip addr add 10.77.0.1/32 dev {ifa}\nip link set {ifa} up\n"
                f"ip route add 10.77.0.2/32 dev {ifa}\n")
            hand_times.append(first_reply(lab, a, "10.77.0.2", ["sh", "-e", str(script)], env))
            lab.run(a, ["ip", "link", "del", ifa])
            lab.run(b, ["ip", "link", "del", ifb])
        version = [timed(lambda: lab.run(a, [*meshctl_argv(), "version"])) for _ in range(args.trials)]

    for name, samples in (*cases.items(), ("by hand (wireguard-go, wg, ip)", hand_times)):
        exits, replies = [s[0] for s in samples], [s[1] for s in samples]
        rows.append([name, f"{median(exits):.3f}", f"{median(replies):.3f}",
                     f"{min(replies):.3f}..{max(replies):.3f}"])
    rows.append(["meshctl version (start-up alone)", f"{median(version):.3f}", "-", "-"])
    up = median([s[1] for s in cases["meshctl up"]])
    print(f"{args.trials} trials each; {load_note()}")
    print(table(["from the start of", "command exits (s, median)", "first reply (s, median)", "range (s)"], rows))
    print(f"meshctl up -> first reply: {up:.3f} s (goal <= {GOAL_S:g} s) {'OK' if up <= GOAL_S else 'MISSED'}")


if __name__ == "__main__":
    main()
