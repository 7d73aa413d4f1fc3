#!/usr/bin/env python3
"""Soak: a 20-node lab mesh with an agent per node while peers join and leave (root).

    sudo .venv/bin/python bench/soak.py [--minutes 15] [--nodes 20] [--churners 6] [--every 3]
                                        [--sync-interval 2] [--sample 15] [--pairs 0]

n hosts on one LAN (network namespaces), each joined, approved and merged through the lab's git
server, each running `meshctl up --sync-interval S` (the agents fetch the repository every S
seconds and pick up the admin's pushes on their own). The last --churners hosts churn for
--minutes: --workers changes in flight at once (the admin's commits one at a time), each worker
starting one every --every seconds at most. Leaves (`meshctl admin revoke` pushed, then
`meshctl down` on the device) until half of them are out, then alternately the longest-out host
comes back (a new device: fresh keys and name, `meshctl join`, approve + merge + push, `meshctl up`)
and the longest-in one leaves. All churners are back before the end.
The other hosts' agents run the whole time and are the ones judged for growth.

Sampled every --sample seconds: each agent's RSS, open fds and threads (/proc), each node's rule
count in `table netdev meshctl`, the lab's wireguard-go processes. The first and last samples are
taken with every host joined and converged (same membership), each folded from 5 reads.

Tolerances (exit 1 when one is exceeded, or a pair fails, or a `down` leaves something behind):
- fds (git pack files apart), nft rules per stable node: no growth at all from start to end;
- threads: at the end no more than at the start or asyncio's default executor cap (min(32,
  CPUs + 4) workers, started lazily) plus the main thread;
- git pack files an agent holds open: at most 3 at the end (one leaked per fetch would be dozens);
- wireguard-go processes: exactly one per node that is up, at every sample;
- RSS per stable agent: mean of the last 20 % of samples minus mean of the first 20 %, at most
  max(--rss-tolerance-mib, --rss-tolerance-pct of the first window). CPython returns freed memory
  to the OS in whole 256 KiB arenas and the netmap's size follows the membership (up to --churners/2
  fewer members in mid-run windows), so a few MiB of movement is not a leak; a per-change leak of
  even 20 KiB over the ~300 changes of 15 minutes would exceed it.
At the end every pair of members pings (mesh IPv4, one direction per pair: the echo's reply
crosses the tunnel back): all n*(n-1)/2 pairs unless --pairs N asks for a random sample.
Every namespace and process is removed at exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests" / "soak", ROOT / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from dataplane_common import load_note, require_root  # noqa: E402
from soak_support import Sample, Soak, format_table, judge, same_pid  # noqa: E402


def show(sample: Sample, stable: list[str]) -> None:
    rss = [sample.agents[k].rss_kib / 1024 for k in stable if k in sample.agents]
    fds = [sample.agents[k].fds for k in stable if k in sample.agents]
    thr = [sample.agents[k].threads for k in stable if k in sample.agents]
    rules = [sample.nft_rules[k] for k in stable if k in sample.nft_rules]
    packs = [sample.agents[k].pack_fds for k in stable if k in sample.agents]
    print(f"{sample.t:>7.0f}{sample.members:>8}{sample.nodes_up:>5}{sample.wireguard_go:>6}"
          f"{min(rss):>8.1f}{max(rss):>8.1f}{min(fds):>5}{max(fds):>5}{min(thr):>5}{max(thr):>5}"
          f"{min(rules):>6}{max(rules):>6}{sample.wg_go_stray:>6}{max(packs):>6}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--churners", type=int, default=6, help="hosts that leave and join (the others stay)")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between a worker's changes (at least)")
    ap.add_argument("--workers", type=int, default=2, help="membership changes in flight at once")
    ap.add_argument("--sync-interval", type=float, default=2.0, help="the agents' --sync-interval")
    ap.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--pairs", type=int, default=0, help="ping a random sample of N pairs at the end (0: all)")
    ap.add_argument("--rss-tolerance-mib", type=float, default=6.0)
    ap.add_argument("--rss-tolerance-pct", type=float, default=10.0)
    args = ap.parse_args()
    require_root()

    from lab import open_lab

    failures: list[str] = []
    t0 = time.monotonic()
    with open_lab("msoak") as lab:
        soak = Soak(lab, args.nodes, args.churners, args.sync_interval)
        try:
            soak.build()
            print(f"built {args.nodes} nodes ({args.nodes - args.churners} stable, {args.churners} churning), "
                  f"all up, in {time.monotonic() - t0:.0f} s; {load_note()}", flush=True)
            lagging = soak.converged(60)
            if lagging:
                failures.append(f"not converged before the churn: {lagging[:3]}")
            time.sleep(3 * args.sync_interval)  # a few timer passes, so every agent has its threads
            stable = soak.stable_slots
            print(f"{'t (s)':>7}{'members':>8}{'up':>5}{'wg-go':>6}{'RSS min':>8}{'max':>8}{'fds':>5}{'max':>5}"
                  f"{'thr':>5}{'max':>5}{'rules':>6}{'max':>6}{'stray':>6}{'packs':>6}   (stable agents)", flush=True)
            first = soak.quiet_sample(0.0)
            show(first, stable)
            churn_start = time.monotonic()
            during = soak.churn(args.minutes * 60, args.every, args.sample, lambda s: show(s, stable),
                                args.workers)
            churn_s = time.monotonic() - churn_start
            lagging = soak.converged(60)
            if lagging:
                failures.append(f"not converged after the churn: {lagging[:3]}")
            time.sleep(2 * args.sync_interval)
            last = soak.quiet_sample(time.monotonic() - churn_start)
            show(last, stable)
            samples = [first, *during, last]

            pairs = soak.pairs()
            total = len(pairs)
            if args.pairs and args.pairs < total:
                pairs = random.Random(1).sample(pairs, args.pairs)
            ping_start = time.monotonic()
            failed = soak.ping_pairs(pairs)
            ping_s = time.monotonic() - ping_start

            joins = [e for e in soak.events if e[1] == "join"]
            leaves = [e for e in soak.events if e[1] == "leave"]
            print()
            print(f"churn: {churn_s:.0f} s, {len(leaves)} leaves and {len(joins)} joins "
                  f"({len(soak.events) / churn_s * 60:.1f} changes/min; a join took {_mean(joins):.1f} s, "
                  f"a leave {_mean(leaves):.1f} s on average); agents sync every {args.sync_interval:g} s")
            print(f"samples: {len(samples)}, every {args.sample:g} s; {load_note()}")
            verdicts = judge(samples, stable, rss_tolerance_kib=int(args.rss_tolerance_mib * 1024),
                             rss_tolerance_pct=args.rss_tolerance_pct)
            print(format_table(verdicts))
            print(f"pairs: {len(pairs) - len(failed)}/{len(pairs)} ping"
                  f"{'' if len(pairs) == total else f' (a sample of the {total})'} in {ping_s:.0f} s")
            failures += [f"{v.metric} grew {v.growth:+.1f} on {v.worst} ({v.tolerance})" for v in verdicts if not v.ok]
            failures += [f"pair {a} -> {b} does not ping" for a, b in failed]
            failures += same_pid(samples, stable)
            failures += soak.leftovers
        finally:
            soak.shutdown()
    print(f"wall time {time.monotonic() - t0:.0f} s; lab removed")
    for line in failures:
        print(f"FAIL: {line}")
    print("soak: OK" if not failures else f"soak: {len(failures)} problem(s)")
    return 1 if failures else 0


def _mean(events: list[tuple[float, str, str, float]]) -> float:
    return sum(e[3] for e in events) / len(events) if events else 0.0


if __name__ == "__main__":
    sys.exit(main())
