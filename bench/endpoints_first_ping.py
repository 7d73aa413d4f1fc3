"""Both agents up -> first ping through two home NATs, with no relay: endpoints through git (issue 18).

    a -- nat-a (port-restricted) --+-- internet: git daemon, coturn [, relay] --+-- nat-b (port-restricted) -- b

Three meshes in one run, each run `meshctl up` on both devices at once, then `ping -c1 -W1`
over the mesh from a to b until one answers; `meshctl down` on both and the NATs' conntrack
flushed between runs. The clock starts when both agents are launched.
- "no relay, cold": no relay listed, no static endpoint; before each run both devices' branches
  are deleted on the host and their endpoint state files removed: all they learn of each other
  is the record the other publishes during the run (the first day of a mesh with no server).
- "no relay, warm": the same, with the records of the previous run left on the host (both
  devices restart: each finds the other's last record in its first fetch).
- "relay listed" (the baseline, as before this issue): a relay on a public host, static endpoints.
- with --baseline-bin PATH (a meshctl built from the code before this change): the relay mesh
  again with that binary, interleaved, so "as fast as before" is a ratio within one run.
Goal: median "no relay, cold" <= 10 s, and the relay mesh as fast as before.

    sudo MESHCTL_BIN=dist/meshctl .venv/bin/python bench/endpoints_first_ping.py [--runs N] [--baseline-bin PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import require_root  # noqa: E402  (also puts the lab on the path)

from lab import PORT_RESTRICTED, Lab, open_lab  # noqa: E402
from lab.scenario import MeshScenario, build_nat_mesh, build_relay_mesh  # noqa: E402

PING_GIVE_UP_S = 60.0
GOAL_S = 10.0
STATE_FILES = ("endpoints.json", "endpoint-published.json")


def up_both(mesh: MeshScenario) -> None:
    threads = [threading.Thread(target=mesh.meshctl, args=(n, "up")) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def one_run(mesh: MeshScenario) -> float:
    t0 = time.monotonic()
    up_both(mesh)
    ip = mesh.members["b"].mesh_ipv4
    while not mesh.ping("a", ip, 1, 1):
        if time.monotonic() - t0 > PING_GIVE_UP_S:
            return float("nan")
    return time.monotonic() - t0


def forget_records(lab: Lab, mesh: MeshScenario, repo_dir: Path) -> None:
    """The host loses every device branch; the devices forget what they published and saw."""
    for name in ("a", "b"):
        subprocess.run(["git", "--git-dir", str(repo_dir), "update-ref", "-d", f"refs/heads/endpoints/{name}"],
                       check=False)
        state = Path(lab.meshctl_env(mesh.members[name].node)["MESHCTL_STATE_DIR"])
        for file in STATE_FILES:
            (state / file).unlink(missing_ok=True)


def series(label: str, runs: int, build: str, cold: bool) -> list[float]:
    out = []
    with open_lab("bend") as lab:
        if build == "relay":
            mesh, topo, relay = build_relay_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED)
        else:
            mesh, topo = build_nat_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED, static_endpoints=False)
        for i in range(runs):
            if cold:
                forget_records(lab, mesh, topo.repo_dir)
            out.append(one_run(mesh))
            mesh.meshctl("a", "down")
            mesh.meshctl("b", "down")
            lab.flush_conntrack(topo.nat_a)
            lab.flush_conntrack(topo.nat_b)
            print(f"  {label} run {i + 1}: {out[-1]:.2f} s", flush=True)
    return out


def main() -> int:
    require_root()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline-bin", help="meshctl built before this change: the relay mesh again with it")
    args = ap.parse_args()
    runs = args.runs
    results = {
        "no relay, cold (records through git)": series("cold", runs, "nat", cold=True),
        "no relay, warm (last records on git)": series("warm", runs, "nat", cold=False),
        "relay listed, static endpoints": series("relay", runs, "relay", cold=False),
    }
    if args.baseline_bin:
        ours = os.environ.get("MESHCTL_BIN")
        os.environ["MESHCTL_BIN"] = args.baseline_bin
        try:
            results["relay listed, code before this change"] = series("relay-before", runs, "relay", cold=False)
        finally:
            if ours is None:
                os.environ.pop("MESHCTL_BIN", None)
            else:
                os.environ["MESHCTL_BIN"] = ours
    base_key = "relay listed, code before this change" if args.baseline_bin else "relay listed, static endpoints"
    base = statistics.median(results[base_key])
    print(f"\n{'both agents launched -> first ping':<42}{'median':>9}{'min':>8}{'max':>8}{'ratio':>8}")
    for label, xs in results.items():
        med = statistics.median(xs)
        print(f"{label:<42}{med:>8.2f}s{min(xs):>7.2f}s{max(xs):>7.2f}s{med / base:>7.2f}x")
    print(f"(ratio: against '{base_key}')")
    cold = statistics.median(results["no relay, cold (records through git)"])
    print(f"goal: no relay, cold, median <= {GOAL_S:g} s: {'met' if cold <= GOAL_S else 'NOT met'} ({runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
