"""Relayed vs direct WireGuard throughput in the same lab and run, and relay CPU per 100 Mbit/s.

    sudo .venv/bin/python bench/relay_throughput.py [--seconds 8] [--rounds 2] [--parallel 1]

Topology (network namespaces; nothing leaves the machine):

    internet ── relay   (`meshctl relay`, UDP :3340, channels on free ports)
       ├── a        wireguard-go + relay peer tool (--channels), iperf3 client
       └── b        wireguard-go + relay peer tool (--channels), iperf3 server

Three paths over the same wireguard-go devices, each run with the same iperf3 settings
(TCP, --seconds), taking turns for --rounds rounds so a drift of the machine hits all alike:

- direct:  a's and b's WireGuard endpoints are each other's addresses;
- channel: the endpoints are the relay's channel ports (what the agent uses once a channel
           is READY): a -> relay -> b, one hop at the relay and none in meshctl;
- proxy:   the endpoints are the peer tools' loopback proxies (the path before a channel is
           ready, and over TCP): a -> proxy -> relay -> proxy -> b.

wireguard-go's UDP buffers are raised to 8 MiB first, as the agent does. Goal (issue 5):
relayed (channel) / direct >= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "relay"))
sys.path.insert(0, str(ROOT / "bench"))

from procstat import cpu_seconds  # noqa: E402
from relay_netns import WG_PORT, RelayLab, netns_missing  # noqa: E402
from relay_support import make_relay_mesh  # noqa: E402

from lab import Lab  # noqa: E402
from lab.core import poll  # noqa: E402


def iperf(rl: RelayLab, a: object, b: object, seconds: int, parallel: int) -> float:
    proc = rl.lab.run(a.node, ["iperf3", "-c", b.tunnel_ip, "-t", str(seconds), "-P", str(parallel), "-J",  # type: ignore[attr-defined]
                               "-O", "1"], timeout=seconds + 60)
    doc = json.loads(proc.stdout)
    return float(doc["end"]["sum_received"]["bits_per_second"])


MODES = ("direct", "channel", "proxy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8, help="iperf3 duration of each run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each path, taking turns")
    ap.add_argument("--parallel", type=int, default=1, help="iperf3 -P streams")
    args = ap.parse_args()
    reason = netns_missing()
    if reason:
        sys.exit(f"relay_throughput: {reason}")
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, Lab(prefix="rbench") as lab:
        mesh = make_relay_mesh(Path(tmp) / "coord", ("alpha", "bravo"))
        rl = RelayLab(lab, mesh)
        rl.relay_node = lab.public_host("relay")
        a_host, b_host = lab.public_host("a"), lab.public_host("b")
        rl.start_relay("--rate-limit-mbit", "100000")
        a = rl.device(a_host, "alpha", 1)
        b = rl.device(b_host, "bravo", 2)
        changed = rl.enlarge_wireguard_buffers(a) + rl.enlarge_wireguard_buffers(b)
        assert changed >= 2, "could not enlarge wireguard-go's socket buffers"
        rl.start_tool(a, [b], "--channels")
        rl.start_tool(b, [a], "--channels")
        poll(lambda: rl.channel(a, b) is not None and rl.channel(b, a) is not None, "channels ready", 15)
        lab.popen(b_host, ["iperf3", "-s"])
        time.sleep(0.5)
        endpoints = {
            "direct": (f"{b_host.ipv4}:{WG_PORT}", f"{a_host.ipv4}:{WG_PORT}"),
            "channel": (rl.channel(a, b), rl.channel(b, a)),
            "proxy": (rl.endpoint(a, b), rl.endpoint(b, a)),
        }
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for rnd in range(args.rounds):
            for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
                to_b, to_a = endpoints[mode]
                rl.wg_peer(a, b, str(to_b))
                rl.wg_peer(b, a, str(to_a))
                poll(lambda: rl.ping_ok(a, b), f"ping ({mode})", 15)
                pids = {"relay": rl.relay_proc.pid, "tool a": a.tool.pid, "tool b": b.tool.pid}  # type: ignore[attr-defined]
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                t0 = time.monotonic()
                bps = iperf(rl, a, b, args.seconds, args.parallel)
                wall = time.monotonic() - t0
                used = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
                runs[mode].append({"bps": bps, **{f"cpu {k}": v / wall for k, v in used.items()}})
                print(f"  round {rnd + 1} {mode:<8}{bps / 1e6:8.1f} Mbit/s", flush=True)
        metrics = rl.metrics()
    mean = {m: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for m, rs in runs.items()}
    print(f"relay throughput, iperf3 TCP {args.seconds} s x {args.parallel} stream(s) x {args.rounds} rounds, "
          f"wireguard-go both ends (8 MiB UDP buffers), {os.cpu_count()} CPUs")
    print(f"{'path':<10}{'Mbit/s':>10}{'relay CPU %':>14}{'tool a CPU %':>14}{'tool b CPU %':>14}")
    for mode, r in mean.items():
        print(f"{mode:<10}{r['bps'] / 1e6:>10.1f}{r['cpu relay'] * 100:>14.1f}{r['cpu tool a'] * 100:>14.1f}"
              f"{r['cpu tool b'] * 100:>14.1f}")
    direct = mean["direct"]["bps"]
    for mode in ("channel", "proxy"):
        relayed, cpu = mean[mode]["bps"], mean[mode]["cpu relay"]
        goal = " (goal >= 0.5)" if mode == "channel" else ""
        print(f"ratio {mode}/direct: {relayed / direct:.2f}{goal}; relay CPU per 100 Mbit/s relayed: "
              f"{cpu / (relayed / 1e8) * 100:.1f} % of one core")
    drops = [line for line in metrics.splitlines() if line.startswith("meshctl_relay_drops_total")]
    print("relay drops:", ", ".join(d.split("{")[1] for d in drops) or "none")


if __name__ == "__main__":
    main()
