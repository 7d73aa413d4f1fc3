#!/usr/bin/env python3
"""`meshctl sync` at 10, 1,000 and 10,000 peers: one peer changed, and nothing changed (root).

One lab host is the node (a real wireguard-go interface in its network namespace, cron-style
`meshctl sync`, no agent); a git daemon serves the coordination repository. The other members
are written straight into the repository with the coordination library (genuine signed records
with static endpoints), not with 10,000 CLI calls; a first `meshctl sync` configures them all
(not measured). For the two smaller sizes: the median wall time of `meshctl sync` after the
admin added or removed one member (alternately), and after no change at all. At the largest
size only the no-op is timed: nothing new in git and nothing drifted on the host, so the plan is
empty (checked before timing: `sync --dry-run` says "nothing to change" and the timed syncs
print nothing). `meshctl version` is the floor: the interpreter and CLI start-up that every
command pays. Each command is timed inside the node's namespace, from its exec to its exit (not
`ip netns exec`'s own start-up).
Goals: one-change sync at 1,000 within 2x of the one at 10 (issue 3); no-op at 1,000 <= 0.3 s
(issue 3); no-op at 10,000 <= 0.2 s (issues 2 and 17).

    sudo .venv/bin/python bench/dataplane_sync_scale.py [--runs 5] [--big 1000] [--huge 10000]
                                                         [--noop-only] [--before CMD]

--before CMD (e.g. `.venv/bin/python -P -m meshctl` with PYTHONPATH set to a checkout of the old
code, or an older binary) times the no-op at --huge peers with that meshctl too, interleaved with
the one under test in the same lab, with its own `version` floor.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import ROOT, load_note, median, require_root, table  # noqa: E402

if TYPE_CHECKING:
    from lab import Lab, Node

GOAL_RATIO = 2.0
GOAL_NOOP_S = {1000: 0.3, 10_000: 0.2}

# Runs in the node's namespace: the wall time of one command, from its exec to its exit, and the
# CPU time it used (user + system: what a loaded machine changes least).
TIMER = ("import resource, subprocess, sys, time\n"
         "t = time.perf_counter()\n"
         "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
         "dt = time.perf_counter() - t\n"
         "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
         "sys.stderr.write(p.stderr)\n"
         "print(f'{dt:.6f} {ru.ru_utime + ru.ru_stime:.6f} {p.returncode}')\n"
         "sys.stdout.write(p.stdout)\n")


@dataclass
class Times:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def cells(self, floor: Times | None = None) -> list[str]:
        """median wall, median CPU, wall range; with `floor`, wall and CPU minus its medians."""
        wall, cpu = median(self.wall), median(self.cpu)
        cells = [f"{wall:.3f}", f"{cpu:.3f}"]
        if floor is not None:
            cells += [f"{wall - median(floor.wall):.3f}", f"{cpu - median(floor.cpu):.3f}"]
        return [*cells, f"{min(self.wall):.3f}..{max(self.wall):.3f}"]


def timed_in(lab: Lab, node: Node, argv: list[str], env: dict[str, str], into: Times | None = None) -> str:
    """stdout of `argv` run in `node`'s namespace, its times added to `into`; a failure stops the benchmark."""
    proc = lab.run(node, [sys.executable, "-c", TIMER, *argv], env=env, timeout=900)
    head, _, out = proc.stdout.partition("\n")
    wall, cpu, code = head.split()
    if code != "0":
        raise SystemExit(f"`{' '.join(argv)}` exited {code}: {proc.stderr.strip()[-500:]}")
    if into is not None:
        into.wall.append(float(wall))
        into.cpu.append(float(cpu))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed syncs per case")
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--big", type=int, default=1000)
    ap.add_argument("--huge", type=int, default=10_000, help="peers for the no-op alone (0: skip)")
    ap.add_argument("--noop-only", action="store_true", help="time only the no-op, at --huge peers")
    ap.add_argument("--before", default="", help="another meshctl command to time the no-op with (old code)")
    args = ap.parse_args()
    require_root("wireguard-go", "git")
    # Byte-compiled first, as an installed package (pip) and the binary (PyInstaller) are: under
    # PYTHONDONTWRITEBYTECODE every run would compile meshctl from source again (0.4 s here).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "meshctl")], check=True,
                   stdout=subprocess.DEVNULL)

    from e2e_support import add_members, remove_members

    from lab import meshctl_argv, open_lab
    from lab.scenario import build_lan_mesh

    sizes = [] if args.noop_only else [args.small, args.big]
    one_sizes = set(sizes)
    if args.huge:
        sizes.append(args.huge)
    one_changed: dict[int, Times] = {}
    noop: dict[int, Times] = {}
    version, before_noop, before_version = Times(), Times(), Times()
    before = shlex.split(args.before)
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 1)
        node = mesh.members["node1"].node
        env = lab.meshctl_env(node)
        admin_key = mesh.admin_dir / "admin.key"
        names: list[str] = []

        def publish(message: str) -> None:
            mesh.git("add", "-A")
            mesh.git("commit", "-q", "-m", message)
            mesh.git("push", "-q", str(mesh.repo_dir), "main")

        def grow_to(count: int) -> None:
            base = len(names)
            new = [f"m{i}" for i in range(base, count - 1)]  # the node itself is the count-th peer

            def endpoint(i: int) -> tuple[str, ...]:
                return (f"10.200.{(base + i) // 250}.{(base + i) % 250 + 1}:51820",)

            add_members(mesh.checkout, admin_key, new, int(time.time()), endpoints=endpoint)
            names.extend(new)
            publish(f"Approve {len(new)} members")
            lab.meshctl(node, ["sync"], timeout=900)  # the big first apply is not what is measured

        def settle(size: int) -> None:
            """Wait until a dry run plans nothing. wireguard-go handshakes with every new peer at
            once (each has an endpoint and a keepalive): at 10,000 its UAPI may not answer within
            meshctl's 5 s for a while after the first configuration."""
            deadline = time.monotonic() + 300
            while True:
                proc = lab.meshctl(node, ["sync", "--dry-run"], timeout=900, check=False)
                if proc.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(5)
            plan = proc.stdout
            if proc.returncode != 0 or "plan: nothing to change" not in plan:
                raise SystemExit(f"at {size} peers the next sync is not a no-op: {proc.stderr.strip()}\n"
                                 + plan[plan.find("plan:"):][:2000])

        def noop_sync(meshctl: list[str], into: Times) -> None:
            out = timed_in(lab, node, [*meshctl, "sync"], env, into)
            if out.strip():
                raise SystemExit(f"the no-op sync changed something: {out.strip()[:500]}")

        for size in sizes:
            grow_to(size)
            if size in one_sizes:
                one_changed[size] = Times()
                for run in range(args.runs):
                    if run % 2 == 0:
                        add_members(mesh.checkout, admin_key, ["extra"], int(time.time()),
                                    endpoints=lambda _i: ("10.201.0.1:51820",))
                    else:
                        remove_members(mesh.checkout, admin_key, ["extra"], int(time.time()))
                    publish("one member changed")
                    timed_in(lab, node, [*meshctl_argv(), "sync"], env, one_changed[size])
                lab.meshctl(node, ["sync"], timeout=900)  # settles what the last change left
            settle(size)
            noop[size] = Times()
            for _ in range(args.runs):  # interleaved with the old code's, so both see the same load
                noop_sync(meshctl_argv(), noop[size])
                if before and size == args.huge:
                    noop_sync(before, before_noop)
        for _ in range(args.runs):
            timed_in(lab, node, [*meshctl_argv(), "version"], env, version)
            if before:
                timed_in(lab, node, [*before, "version"], env, before_version)

    print(f"median of {args.runs} runs, userspace WireGuard, `{' '.join(meshctl_argv())}`; {load_note()}")
    if one_changed:
        print(table(["peers", "one changed: wall s", "CPU s", "wall range s"],
                    [[f"{size}", *times.cells()] for size, times in one_changed.items()]))
        print()
    def start_up(times: Times) -> list[str]:
        wall, cpu, spread = times.cells()
        return [wall, cpu, "-", "-", spread]

    rows = [[f"sync, {size} peers, nothing new", *times.cells(version)] for size, times in noop.items()]
    rows.append(["version (start-up)", *start_up(version)])
    if before:
        rows.append([f"--before: sync, {args.huge} peers, nothing new", *before_noop.cells(before_version)])
        rows.append(["--before: version", *start_up(before_version)])
    print(table(["meshctl", "wall s", "CPU s", "wall - start-up", "CPU - start-up", "wall range s"], rows))
    if args.small in one_changed and args.big in one_changed:
        ratio = median(one_changed[args.big].wall) / median(one_changed[args.small].wall)
        print(f"one changed, {args.big} vs {args.small}: {ratio:.2f}x (goal <= {GOAL_RATIO:g}x) "
              f"{'OK' if ratio <= GOAL_RATIO else 'MISSED'}")
    for size, goal in GOAL_NOOP_S.items():
        if size in noop:
            wall = median(noop[size].wall)
            print(f"no-op at {size}: {wall:.3f} s (goal <= {goal} s) {'OK' if wall <= goal else 'MISSED'}")


if __name__ == "__main__":
    main()
