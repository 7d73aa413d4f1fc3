"""Time from both agents started to the first ping over a direct path through two NATs.

    a -- nat-a (port-restricted) -- internet (git, coturn) -- nat-b (port-restricted) -- b

One mesh; each run: `meshctl up` on both devices at once, then `ping -c1 -W1` over the
mesh from a to b until one answers; `meshctl down` on both and the NATs' conntrack
flushed between runs. Two clocks: from launching both agents ("from launch"), and from
both `meshctl up` having returned (their first sync pass done: "after up").
Baseline in the same run: the same from-launch time on a LAN with no NAT (build_lan_mesh).
Goal: median "after up" <= 2 s. Root; run: .venv/bin/python bench/nat_time_to_direct.py [RUNS]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab, next to meshctl

from lab import PORT_RESTRICTED, lab_unavailable, open_lab  # noqa: E402
from lab.scenario import MeshScenario, build_lan_mesh, build_nat_mesh  # noqa: E402

PING_GIVE_UP_S = 30.0


def up_both(mesh: MeshScenario, names: list[str]) -> None:
    threads = [threading.Thread(target=mesh.meshctl, args=(n, "up")) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_run(mesh: MeshScenario, src: str, dst: str) -> tuple[float, float]:
    t0 = time.monotonic()
    up_both(mesh, [src, dst])
    t1 = time.monotonic()
    ip = mesh.members[dst].mesh_ipv4
    while not mesh.ping(src, ip, 1, 1):
        if time.monotonic() - t1 > PING_GIVE_UP_S:
            return float("nan"), float("nan")
    t2 = time.monotonic()
    return t2 - t0, t2 - t1


def main() -> int:
    reason = lab_unavailable()
    if reason:
        print(f"needs the lab: {reason}", file=sys.stderr)
        return 1
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    nat: list[tuple[float, float]] = []
    lan: list[tuple[float, float]] = []
    with open_lab("bnat") as lab:
        mesh, topo = build_nat_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED)
        for i in range(runs):
            nat.append(one_run(mesh, "a", "b"))
            mesh.meshctl("a", "down")
            mesh.meshctl("b", "down")
            lab.flush_conntrack(topo.nat_a)
            lab.flush_conntrack(topo.nat_b)
            print(f"  nat run {i + 1}: {nat[-1][0]:.2f} s from launch, {nat[-1][1]:.2f} s after up", flush=True)
    with open_lab("blan") as lab:
        mesh = build_lan_mesh(lab, 2, name="benchlan")
        for i in range(runs):
            lan.append(one_run(mesh, "node1", "node2"))
            mesh.meshctl("node1", "down")
            mesh.meshctl("node2", "down")
            print(f"  lan run {i + 1}: {lan[-1][0]:.2f} s from launch, {lan[-1][1]:.2f} s after up", flush=True)
    nat_launch = statistics.median(r[0] for r in nat)
    nat_after = statistics.median(r[1] for r in nat)
    lan_launch = statistics.median(r[0] for r in lan)
    lan_after = statistics.median(r[1] for r in lan)
    print(f"\n{'setup':<34}{'median from launch':>20}{'median after up':>18}")
    print(f"{'two port-restricted NATs':<34}{nat_launch:>19.2f}s{nat_after:>17.2f}s")
    print(f"{'one LAN, static endpoints':<34}{lan_launch:>19.2f}s{lan_after:>17.2f}s")
    print(f"{'ratio NAT / LAN (from launch)':<34}{nat_launch / lan_launch:>20.2f}")
    print(f"goal: median after up <= 2 s: {'met' if nat_after <= 2.0 else 'NOT met'} ({runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
