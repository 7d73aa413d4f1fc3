#!/usr/bin/env python3
"""`meshctl sync` at 10 and at 1,000 peers: one peer changed, and nothing changed (root).

One lab host is the node (wireguard-go, cron-style `meshctl sync`, no agent); a git daemon
serves the coordination repository. The other members are written straight into the repository
with the coordination library (genuine signed records with static endpoints), not with 1,000
CLI calls. For each size: the median wall time of `meshctl sync` after the admin added or removed
one member (alternately), and after no change at all. `meshctl version` is the floor: the
interpreter and CLI start-up that every command pays.
Goals (issue 3): one-change sync at 1,000 within 2x of the one at 10; no-op at 1,000 <= 0.3 s.

    sudo .venv/bin/python bench/dataplane_sync_scale.py [--runs 5] [--big 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import load_note, median, require_root, table, timed  # noqa: E402

GOAL_RATIO = 2.0
GOAL_NOOP_S = 0.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed syncs per case")
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--big", type=int, default=1000)
    args = ap.parse_args()
    require_root()

    from e2e_support import add_members, remove_members

    from lab import meshctl_argv, open_lab
    from lab.scenario import build_lan_mesh

    results: dict[int, dict[str, list[float]]] = {}
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 1)
        node = mesh.members["node1"].node
        admin_key = mesh.admin_dir / "admin.key"
        names: list[str] = []

        def publish(message: str) -> None:
            mesh.git("add", "-A")
            mesh.git("commit", "-q", "-m", message)
            mesh.git("push", "-q", str(mesh.repo_dir), "main")

        def grow_to(count: int) -> None:
            base = len(names)
            new = [f"m{i}" for i in range(base, count)]

            def endpoint(i: int) -> tuple[str, ...]:
                return (f"10.200.{(base + i) // 250}.{(base + i) % 250 + 1}:51820",)

            add_members(mesh.checkout, admin_key, new, int(time.time()), endpoints=endpoint)
            names.extend(new)
            publish(f"Approve {len(new)} members")
            lab.meshctl(node, ["sync"], timeout=600)  # the big first apply is not what is measured

        def sync_s() -> float:
            return timed(lambda: lab.meshctl(node, ["sync"], timeout=600))

        for size in (args.small, args.big):
            grow_to(size)
            one: list[float] = []
            for run in range(args.runs):
                if run % 2 == 0:
                    add_members(mesh.checkout, admin_key, ["extra"], int(time.time()),
                                endpoints=lambda _i: ("10.201.0.1:51820",))
                else:
                    remove_members(mesh.checkout, admin_key, ["extra"], int(time.time()))
                publish("one member changed")
                one.append(sync_s())
            noop = [sync_s() for _ in range(args.runs)]
            peers = len(mesh.status("node1")["peers"])
            results[size] = {"one": one, "noop": noop, "peers": [float(peers)]}
        version = [timed(lambda: lab.run(node, [*meshctl_argv(), "version"])) for _ in range(args.runs)]

    rows = []
    for size, r in results.items():
        rows.append([f"{size}", f"{median(r['one']):.3f}", f"{median(r['noop']):.3f}",
                     f"{min(r['one']):.3f}..{max(r['one']):.3f}"])
    rows.append(["meshctl version", f"{median(version):.3f}", "-", "-"])
    ratio = median(results[args.big]["one"]) / median(results[args.small]["one"])
    noop_big = median(results[args.big]["noop"])
    print(f"median of {args.runs} `meshctl sync` runs, userspace WireGuard; {load_note()}")
    print(table(["peers", "one changed (s)", "no-op (s)", "one changed range (s)"], rows))
    print(f"one changed, {args.big} vs {args.small}: {ratio:.2f}x (goal <= {GOAL_RATIO:g}x) "
          f"{'OK' if ratio <= GOAL_RATIO else 'MISSED'}")
    print(f"no-op at {args.big}: {noop_big:.3f} s (goal <= {GOAL_NOOP_S} s) "
          f"{'OK' if noop_big <= GOAL_NOOP_S else 'MISSED'}")


if __name__ == "__main__":
    main()
