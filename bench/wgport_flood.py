#!/usr/bin/env python3
"""The agent's CPU under floods on WireGuard's port, per kind of packet, and the tunnel meanwhile.

A two-member mesh on one LAN (agents up, a direct path); the LAN's git host, which is no
member, floods node1's WireGuard port at --rate packets/s for --seconds, one kind at a time:

- member-key: disco magic + node2's disco public key (it is in the repository) + garbage,
  what costs a decryption attempt when it gets that far;
- unknown-key: disco magic + a random key + garbage;
- stun: STUN binding responses (magic cookie, random transaction ids);
- member-key-spoofed: member-key from a random source address and port of the LAN each time
  (per-source buckets cannot stop it; the strangers' shared bucket does).

For each: the agent's CPU (its /proc/<pid>/stat, user + system, over the flood), wireguard-go's
(which receives the same packets and drops them: WireGuard's cost, shown for scale), and 10
pings a second from node2 to node1's mesh address during the flood (lost / sent), and whether
node2's path to node1 is still direct afterwards. `idle` is the same window without a flood.

--baseline-rev REV (e.g. the commit before issue 23) runs the same floods first against the
agent of that revision (git archive of REV, imported instead of this tree), in the same run.

    sudo .venv/bin/python bench/wgport_flood.py [--rate 20000] [--seconds 10] [--baseline-rev REV]

Goal (issue 23): under 10 % of a core for each kind at 20,000 packets/s, no ping lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab.core as lab_core  # noqa: E402
from lab import Lab, lab_unavailable, open_lab  # noqa: E402
from lab.scenario import MeshScenario, build_lan_mesh  # noqa: E402

ROOT: Final = Path(__file__).resolve().parents[1]
KINDS: Final = ("idle", "member-key", "unknown-key", "stun", "member-key-spoofed")
WG_PORT: Final = 51820  # build_lan_mesh's endpoints
GOAL_CPU_PCT: Final = 10.0
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

FLOODER: Final = ROOT / "tests" / "e2e_attacks" / "flooder.py"  # shared with the lab test


@dataclass(frozen=True, slots=True)
class Row:
    code: str  # "this tree" or the baseline revision
    kind: str
    sent: int
    seconds: float
    agent_pct: float
    wg_pct: float
    pings_lost: int
    pings_sent: int
    direct_after: bool
    refused: int  # packets the agent refused by source (its status), during the flood


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def wireguard_go_pid(ifname: str) -> int | None:
    from meshctl.wg.userspace import wireguard_go_processes

    return next((pid for name, pid in wireguard_go_processes() if name == ifname), None)


def status(mesh: MeshScenario, name: str) -> dict[str, object]:
    return json.loads(mesh.meshctl(name, "status", "--json").stdout)  # type: ignore[no-any-return]


def direct_to(mesh: MeshScenario, name: str, peer: str) -> bool:
    peers = status(mesh, name)["peers"]
    assert isinstance(peers, list)
    return any(p["name"] == peer and p["path"] == "direct" for p in peers)


def refused(mesh: MeshScenario, name: str) -> int:
    me = status(mesh, name)["self"]
    assert isinstance(me, dict)
    counts = me.get("nat", {}).get("admission")
    return int(counts["refused_source"] + counts["refused_stranger"]) if counts else 0


def build(lab: Lab) -> tuple[MeshScenario, str]:
    mesh = build_lan_mesh(lab, 2, name="flood")
    for name in ("node1", "node2"):
        mesh.up(name)
    deadline = time.monotonic() + 60
    while not (direct_to(mesh, "node1", "node2") and direct_to(mesh, "node2", "node1")):
        if time.monotonic() > deadline:
            raise SystemExit("no direct path between the two nodes within 60 s")
        time.sleep(0.5)
    attacker = next(ns for ns in lab.namespaces if ns.endswith("-git"))
    return mesh, attacker


def disco_key_hex(mesh: MeshScenario, name: str) -> str:
    import base64

    record = json.loads((mesh.checkout / "peers" / f"{name}.json").read_text())
    return base64.b64decode(record["disco_key"]).hex()


def flood(mesh: MeshScenario, attacker: str, kind: str, rate: int, seconds: float, code: str) -> Row:
    lab = mesh.lab
    node1, node2 = mesh.members["node1"], mesh.members["node2"]
    agent_pid = int((Path(lab.meshctl_env(node1.node)["MESHCTL_STATE_DIR"]) / "agent.pid").read_text())
    wg_pid = wireguard_go_pid(lab.meshctl_env(node1.node)["MESHCTL_INTERFACE"])
    refused_before = refused(mesh, "node1")
    count = int(seconds * 10)
    pinger = lab.popen(node2.node, ["ping", "-q", "-c", str(count), "-i", "0.1", "-W", "1", node1.mesh_ipv4],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    agent0, wg0, t0 = cpu_seconds(agent_pid), cpu_seconds(wg_pid) if wg_pid else 0.0, time.monotonic()
    if kind == "idle":
        time.sleep(seconds)
        sent = 0
    else:
        proc = lab.run(attacker, [sys.executable, "-S", str(FLOODER), str(node1.node.ipv4), str(WG_PORT), kind,
                                  str(rate), str(seconds), disco_key_hex(mesh, "node2")], timeout=seconds + 30)
        sent = int(proc.stdout.strip() or 0)
    took = time.monotonic() - t0
    agent1, wg1 = cpu_seconds(agent_pid), cpu_seconds(wg_pid) if wg_pid else 0.0
    out, _ = pinger.communicate(timeout=seconds + 15)
    summary = next((line for line in out.splitlines() if "packets transmitted" in line), "0 transmitted, 0 received")
    transmitted, received = (int(summary.split()[0]), int(summary.split(", ")[1].split()[0]))
    return Row(code, kind, sent, took, 100 * (agent1 - agent0) / took, 100 * (wg1 - wg0) / took,
               transmitted - received, transmitted, direct_to(mesh, "node2", "node1"),
               refused(mesh, "node1") - refused_before)


def run_floods(rate: int, seconds: float, code: str) -> list[Row]:
    with open_lab() as lab:
        mesh, attacker = build(lab)
        try:
            rows = []
            for kind in KINDS:
                rows.append(flood(mesh, attacker, kind, rate, seconds, code))
                row = rows[-1]
                print(f"  {code:>12} {kind:<19} agent {row.agent_pct:5.1f} %  wireguard-go {row.wg_pct:5.1f} %  "
                      f"sent {row.sent}  pings lost {row.pings_lost}/{row.pings_sent}", flush=True)
                time.sleep(2)  # let the queues drain between kinds
            return rows
        finally:
            for name in ("node1", "node2"):
                mesh.meshctl(name, "down", check=False)


def baseline_tree(rev: str, into: Path) -> Path:
    """The meshctl package of `rev`, exported where only the baseline's processes import it from."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "meshctl"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20_000, help="packets per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline-rev", default=None, help="also measure the agent of this revision first")
    args = parser.parse_args()
    reason = lab_unavailable()
    for tool in ("wireguard-go", "wg", "git", "ping"):
        if reason is None and shutil.which(tool) is None:
            reason = f"this benchmark needs `{tool}`"
    if reason:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    if args.baseline_rev:
        with tempfile.TemporaryDirectory(prefix="wgport-flood-") as tmp:
            tree = baseline_tree(args.baseline_rev, Path(tmp))
            own_root, cwd = lab_core._PACKAGE_ROOT, os.getcwd()
            # Every lab process (the agents' own re-exec included) imports meshctl from `tree`
            # first; away from this checkout, so `python -m meshctl` does not find it in the cwd.
            lab_core._PACKAGE_ROOT = str(tree)  # type: ignore[misc]
            os.chdir(tmp)
            try:
                rows += run_floods(args.rate, args.seconds, args.baseline_rev[:12])
            finally:
                lab_core._PACKAGE_ROOT = own_root  # type: ignore[misc]
                os.chdir(cwd)
    rows += run_floods(args.rate, args.seconds, "this tree")
    print()
    print(f"floods of {args.rate} packets/s for {args.seconds:g} s at node1's WireGuard port (wireguard-go), "
          "from a LAN host that is no member; CPU in % of one core over the flood")
    print(f"{'code':>12}  {'kind':<19} {'sent/s':>7} {'agent %':>8} {'wg-go %':>8} {'refused':>8} "
          f"{'pings lost':>10} {'direct after':>12}")
    for r in rows:
        print(f"{r.code:>12}  {r.kind:<19} {r.sent / r.seconds:>7.0f} {r.agent_pct:>8.1f} {r.wg_pct:>8.1f} "
              f"{r.refused:>8d} {f'{r.pings_lost}/{r.pings_sent}':>10} {'yes' if r.direct_after else 'NO':>12}")
    ours = [r for r in rows if r.code == "this tree" and r.kind != "idle"]
    met = all(r.agent_pct < GOAL_CPU_PCT and r.pings_lost == 0 for r in ours)
    print(f"goal: agent under {GOAL_CPU_PCT:g} % of a core for each kind, no ping lost: {'met' if met else 'NOT met'}")
    load1, load5, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.1f} (1 min) {load5:.1f} (5 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
