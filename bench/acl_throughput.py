#!/usr/bin/env python3
"""Throughput through the mesh tunnel with meshctl's nft filter vs the same tunnel without it.

A two-node mesh is built in the network lab as a person would (init, join, approve with
a tag and an owner, a zero-trust policy signed into the repository, `meshctl up`): the
client laptop (owner dana, group:dev) may reach the server (tag:prod) on iperf3's port
only. One long iperf3 TCP flow runs over the WireGuard tunnel (the nodes' mesh
addresses) while the two set-ups take turns every BLOCK_S seconds:

- filter:    meshctl's tables as the agent applied them (table netdev meshctl hooked to the mesh
             interface, and table inet meshctl's strong-host chain that every packet of the host
             passes, WireGuard's own included; checked by reading them back);
- no filter: those tables deleted on both nodes (the baseline).

Why one flow with the set-up switched under it, not separate runs: on this shared 2-core
machine separate iperf3 runs of the same set-up differ by 10 % and more (TCP's start, the
scheduler, other tenants), which buries a difference of a few percent. Blocks a few
seconds apart see the same conditions; the first second of each block (the switch) is
left out. The figure is the ratio of the two means over all blocks, with a bootstrap
90 % interval over adjacent block pairs.

The agents sync once an hour here, so they do not put the table back mid-run.

    sudo .venv/bin/python bench/acl_throughput.py [--seconds 240] [--parallel 1] [--variant V[,V...]]

--variant tells the parts of the cost apart: `acl-only` the mesh filter without the strong
host (what meshctl ran before issue 23: the strong host costs the difference), `hooks-only` runs
the tables' sets and base chains without a rule (what the hooks alone cost), `first-rules` only the rules a TCP flow's
packets stop at, `empty-table` an empty table (an A/A control: how far from 1.0 the method
itself lands). Several variants take turns in one run (no filter, V1, no filter, V2, ...),
each compared with the no-filter blocks next to it: controls measured under the same load.

Goal (issue 6): ratio filter / no filter at least 0.97.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import Lab, LabError, Node, lab_unavailable, open_lab  # noqa: E402
from lab.scenario import MeshScenario, build_lan_mesh  # noqa: E402

GOAL_RATIO = 0.97
IPERF_PORT = 5201
DENIED_PORT = 5202  # listening, but the policy does not allow it
BLOCK_S = 3  # seconds per set-up before switching; the first is left out
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
		{{"src": "dana@example.com", "accept": ["tag:prod:{IPERF_PORT}"], "deny": ["tag:prod:{DENIED_PORT}"]}},
	],
}}
"""


NO_FILTER: Final = "no filter"


@dataclass(frozen=True, slots=True)
class Block:
    setup: str  # NO_FILTER or a variant
    mbit_per_s: float  # mean of the block's interval reports, its first one left out


TABLES: Final = ("netdev", "inet")  # meshctl's: the mesh filter, and the strong host (issue 23)


def _rules_kept(listing: str, keep: Callable[[str, str], bool]) -> str:
    """The tables with their sets and base chains, and only the rules `keep(chain, rule)` picks."""
    kept, chain = [], ""
    for line in listing.splitlines():
        if line.startswith("\tchain "):
            chain = line.split()[1]
        elif line.startswith("\t}"):
            chain = ""
        elif chain and not line.lstrip().startswith("type filter hook") and not keep(chain, line):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def _hooks_only(listing: str) -> str:
    """No rules at all: what the hooks alone cost."""
    return _rules_kept(listing, lambda _chain, _line: False)


def _first_rules(listing: str) -> str:
    """Only the rules a TCP flow's packets stop at (the first of each filter chain; the strong host's
    rules are all passed by WireGuard's own packets): what they cost."""
    return _rules_kept(listing, lambda chain, line: chain == "strong-host" or "tcp flags != syn" in line
                       or "meta l4proto != udp" in line)


def _acl_only(listing: str) -> str:
    """The mesh filter without the strong host (meshctl before issue 23): what the strong host costs."""
    return listing.split("table inet meshctl {")[0]


# What the "filter" blocks run: meshctl's tables, or controls that tell the parts apart.
VARIANTS: dict[str, Callable[[str], str]] = {
    "meshctl": lambda listing: listing,
    "acl-only": _acl_only,
    "hooks-only": _hooks_only,
    "first-rules": _first_rules,
    "empty-table": lambda listing: "table netdev meshctl {\n}\n",  # no hooks: an A/A control
}
# Deleting both tables in one transaction; `add` first, so a missing one is no error.
DELETE_ALL: Final = "".join(f"add table {f} meshctl\ndelete table {f} meshctl\n" for f in TABLES)


class FilterSwitch:
    """Removes meshctl's tables on the nodes and puts a variant of them back, byte-exact.

    Both directions cost the same: one nft command per node, then one listing per node to
    check it took. The switch falls in the block's first second, which is left out; its
    duration is recorded so the table can show that it fits there.
    """

    def __init__(self, lab: Lab, nodes: list[Node], variants: list[str]) -> None:
        self.lab = lab
        self.nodes = nodes
        applied = {n.ns: self._listing(n) for n in nodes}
        if None in applied.values() or not all("table inet meshctl" in (t or "") for t in applied.values()):
            raise LabError("the agents did not apply meshctl's tables netdev and inet")
        self.saved = {v: {ns: VARIANTS[v](text or "") for ns, text in applied.items()} for v in variants}
        self.current = "meshctl"  # as the agents left it (checked above)
        self.durations: dict[str, list[float]] = {}

    def _listing(self, node: Node) -> str | None:
        texts = []
        for family in TABLES:  # -t: no set elements
            listed = self.lab.run(node, ["nft", "-t", "list", "table", family, "meshctl"], check=False)
            if listed.returncode == 0:
                texts.append(listed.stdout)
        return "".join(texts) or None

    def set(self, setup: str) -> None:
        if setup == self.current:
            return
        started = time.perf_counter()
        for node in self.nodes:
            load = DELETE_ALL + (self.saved[setup][node.ns] if setup != NO_FILTER else "")
            self.lab.run(node, ["nft", "-f", "-"], input=load)
        for node in self.nodes:
            if self._listing(node) != (None if setup == NO_FILTER else self.saved[setup][node.ns]):
                raise LabError(f"{node.name}: meshctl's tables are not {setup}")
        self.current = setup
        self.durations.setdefault(setup, []).append(time.perf_counter() - started)


def schedule(variants: list[str], blocks: int) -> list[str]:
    """The set-up of each block: no filter, V1, no filter, V2, ... (every other block is the baseline)."""
    return [NO_FILTER if i % 2 else variants[(i // 2) % len(variants)] for i in range(blocks)]


def build(lab: Lab) -> MeshScenario:
    mesh = build_lan_mesh(lab, 2, name="bench", names=NAMES,
                          approve_args={"laptop": ["--owner", "dana@example.com"], "server": ["--tag", "tag:prod"]})
    mesh.set_policy(POLICY)
    for name in NAMES:
        mesh.up(name, "--sync-interval", SYNC_INTERVAL_S)
    return mesh


INTERVAL_LINE = re.compile(r"\]\s+[\d.]+-[\d.]+\s+sec\s+[\d.]+ \w+Bytes\s+([\d.]+) Mbits/sec")


def _wait_for_server(lab: Lab, client: Node, server_ip: str) -> None:
    deadline = time.monotonic() + 10
    while lab.run(client, ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", "1"], check=False).returncode:
        if time.monotonic() > deadline:  # also warms up the tunnel (handshake done)
            raise LabError("iperf3 server did not answer through the tunnel")
        time.sleep(0.2)


def measure(mesh: MeshScenario, seconds: int, parallel: int, variants: list[str]) -> list[Block]:
    """One iperf3 flow; the set-up is switched at every BLOCK_S-th interval report."""
    lab = mesh.lab
    client, server = mesh.members["laptop"].node, mesh.members["server"].node
    server_ip = mesh.members["server"].mesh_ipv4
    lab.popen(server, ["iperf3", "-s", "-B", server_ip, "-p", str(IPERF_PORT)])
    lab.popen(server, ["iperf3", "-s", "-B", server_ip, "-p", str(DENIED_PORT)])
    switch = FilterSwitch(lab, [client, server], variants)
    plan = schedule(variants, seconds // BLOCK_S + 2)
    switch.set(plan[0])
    _wait_for_server(lab, client, server_ip)
    proc = lab.popen(client, ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-i", "1",
                              "-P", str(parallel), "--forceflush", "-f", "m"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    blocks: list[Block] = []
    rates: list[float] = []
    seen = 0
    for line in proc.stdout:
        match = INTERVAL_LINE.search(line)
        # With -P > 1 only the [SUM] line of each interval counts.
        if not match or (parallel > 1 and "[SUM]" not in line) or "sender" in line or "receiver" in line:
            continue
        if seen % BLOCK_S:  # the block's first second holds the switch: left out
            rates.append(float(match.group(1)))
        seen += 1
        if seen % BLOCK_S == 0:
            blocks.append(Block(plan[len(blocks)], statistics.mean(rates)))
            print(f"  {blocks[-1].setup:12s} {blocks[-1].mbit_per_s:7.1f} Mbit/s", flush=True)
            rates = []
            switch.set(plan[len(blocks)])
    if proc.wait() != 0:
        raise LabError(f"iperf3 failed (exit {proc.returncode})")
    for setup, took in switch.durations.items():
        print(f"switch to {setup}: mean {statistics.mean(took) * 1000:.0f} ms, "
              f"max {max(took) * 1000:.0f} ms (inside the left-out first second)")
    if "meshctl" in variants:
        # Still enforcing: a listening port the policy does not allow gets no answer.
        switch.set("meshctl")
        probe = lab.run(client, ["iperf3", "-c", server_ip, "-p", str(DENIED_PORT), "-t", "1",
                                 "--connect-timeout", "1000"], check=False)
        if probe.returncode == 0:
            raise LabError(f"the filter did not block port {DENIED_PORT} after the run")
    return blocks


def adjacent_pairs(blocks: list[Block], variant: str) -> list[tuple[float, float]]:
    """(variant, no filter) for each block of `variant` and the baseline block just before it
    (or after it, for the first block of the run)."""
    pairs = []
    for i, block in enumerate(blocks):
        if block.setup != variant:
            continue
        near = [blocks[j] for j in (i - 1, i + 1) if 0 <= j < len(blocks) and blocks[j].setup == NO_FILTER]
        if near:
            pairs.append((block.mbit_per_s, near[0].mbit_per_s))
    return pairs


def ratio_of_means(pairs: list[tuple[float, float]]) -> float:
    return statistics.mean(f for f, _ in pairs) / statistics.mean(n for _, n in pairs)


def bootstrap_interval(pairs: list[tuple[float, float]], rounds: int = 2000) -> tuple[float, float]:
    """A 90 % interval for ratio_of_means, resampling the adjacent (filter, no filter) pairs."""
    rng = random.Random(0)
    ratios = sorted(ratio_of_means([rng.choice(pairs) for _ in pairs]) for _ in range(rounds))
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


def print_table(blocks: list[Block], seconds: int, parallel: int, variants: list[str]) -> None:
    print()
    print(f"iperf3 TCP over the WireGuard tunnel (wireguard-go), one {seconds} s flow, -P {parallel}, "
          f"set-up switched every {BLOCK_S} s (first second of each block left out)")
    print(f"{'set-up':<12} {'blocks':>7} {'mean Mbit/s':>12} {'median':>8} {'min':>8} {'max':>8}")
    for setup in (NO_FILTER, *variants):
        rates = [b.mbit_per_s for b in blocks if b.setup == setup]
        print(f"{setup:<12} {len(rates):>7d} {statistics.mean(rates):>12.1f} {statistics.median(rates):>8.1f} "
              f"{min(rates):>8.1f} {max(rates):>8.1f}")
    for variant in variants:
        pairs = adjacent_pairs(blocks, variant)
        ratio = ratio_of_means(pairs)
        low, high = bootstrap_interval(pairs)
        adjacent = statistics.median(f / n for f, n in pairs)
        goal = f" (goal >= {GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'NOT met'})" if variant == "meshctl" else ""
        print(f"ratio {variant} / no filter: {ratio:.3f} (90 % interval {low:.3f}-{high:.3f}); "
              f"median of adjacent pairs {adjacent:.3f}{goal}")
    load1, load5, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.1f} (1 min) {load5:.1f} (5 min)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=240, help=f"length of the flow (blocks of {BLOCK_S} s)")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--variant", default="meshctl",
                        help="what the filter blocks run, comma separated: meshctl's table, or controls "
                             f"(see above): {', '.join(sorted(VARIANTS))}")
    args = parser.parse_args()
    variants = args.variant.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(set(variants)) != len(variants):
        parser.error(f"--variant: unknown or repeated: {args.variant}")
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
            blocks = measure(mesh, args.seconds, args.parallel, variants)
        finally:
            for name in NAMES:
                mesh.meshctl(name, "down", check=False)
    print_table(blocks, args.seconds, args.parallel, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
