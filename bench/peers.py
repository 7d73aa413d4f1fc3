#!/usr/bin/env python3
"""meshctl next to Nebula and tinc, in one lab and one run (issue 22; root).

    sudo .venv/bin/python bench/peers.py [--rounds 3] [--seconds 5] [--idle 60] [--peers 10]
                                         [--only ROW ...] [--quick] [--json FILE]

Two devices, each behind its own home-router NAT (port-restricted cone), and on the lab's
internet a host per system for what it needs in the middle: `meshctl relay` (plus the git server
and coturn meshctl's mesh uses), a Nebula lighthouse that is also its relay, a tinc hub that both
devices ConnectTo (tinc 1.0 has no NAT traversal of its own). Nebula 1.6 and tinc 1.0 come from
Debian. All three use tunnel MTU 1420 and 16 MiB UDP socket buffers (both read back from the
kernel and printed); every daemon runs in its own session; only one system runs at a time, each on
its own ports, interfaces and server host, and the NATs forget every mapping before each start.

Rounds interleave the systems (meshctl, Nebula, tinc, meshctl, ...). In each round, per system,
the devices' daemons are started (both at once) four times, each time with the system's server
freshly started before and stopped after, so no start inherits a server's memory of the one before
(tinc 1.0.36 sends the same request IDs after every start, and its hub drops a line it has seen
within PingInterval: a device restarted that soon was sometimes never announced to the other, no
reply for 30 s). From the launch, an ICMP echo every 10 ms to the other device's tunnel address
times the first reply:
1. only a pings b; 2. only b pings a (the issue's "per side"; one side's traffic is what starts the
   other's tunnel, as when one end opens a connection);
3. both ping from the start. Then RSS; in the first round an idle window (--idle s, after --settle
   s) for each node's and the server's CPU time and RSS; then iperf3 TCP a -> b and b -> a
   (--seconds each) once the path is direct (a ping burst passes the server host by);
4. both ping, with everything between the two NATs' public addresses dropped, so the devices meet
   only through the relay / lighthouse / hub; then iperf3 with the server's CPU time.
meshctl is `meshctl up` on an already joined device, as after a reboot. The bytes the server host
receives during each iperf3 run, per byte delivered, show which path the data took (about 0
direct, about 1 relayed).
Then, for meshctl alone (--peers N, 0 to skip): N-1 new devices, each behind its own NAT, are
approved one at a time while a and b run: from the approval's push (a and b asked to sync at once,
as a webhook or cron would; without that they learn it at their next sync, every 60 s) to the
first echo reply, the new device and a pinging in turn. With them all up, a and b have N peers
each, and an idle window measures them again.

The table (markdown, as README shows it) gives medians; --json FILE keeps every sample and the
run's conditions. The machine's load is printed: on a shared machine the figures are pessimistic
and the ratios, measured side by side, are what to compare. Ctrl-C or a failure removes every
namespace and process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers_report as report  # noqa: E402
import procstat  # noqa: E402
from dataplane_common import IPERF_PORT, iperf3, load_average, prober_reply, require_root, start_prober  # noqa: E402
from peers_config import TUNNEL_MTU  # noqa: E402
from peers_systems import (  # noqa: E402
    RELAY_SYNC_S,
    Meshctl,
    PeerSystem,
    Topology,
    block_direct,
    build_topology,
    link_mtu,
    socket_buffers,
    systems,
    unblock_direct,
    wait_settled,
    wan_rx_bytes,
)

from lab import PORT_RESTRICTED, Lab, Node, meshctl_argv, open_lab, poll  # noqa: E402

PROBE_TIMEOUT_S: Final = 30.0
NEW_PEER_TIMEOUT_S: Final = 60.0
SETTLE_TIMEOUT_S: Final = 20.0
NEW_PEER_NET: Final = "100.64.50"
RELAY_SYNC_NEW_PEERS_S: Final = "2"
TOOLS: Final = ("nebula", "nebula-cert", "tincd", "wireguard-go", "wg", "iperf3", "turnserver", "git", "ss",
                "conntrack")

# Which parts of a round each row needs (--only).
# The start with both sides pinging always runs; "one-side": the two starts before it; "idle": the
# idle window (first round); "direct" and "relayed": the iperf3 runs; "blocked": the start with the
# direct path blocked; "peers": meshctl's new peers and the idle window with them.
PHASES: Final = {
    "first-reply": {"one-side"}, "first-reply-both": set(), "rss-start": set(),
    "first-reply-relayed": {"blocked"},
    "new-peer": {"peers"}, "idle-cpu-ten": {"peers"}, "rss-ten": {"peers"},
    "idle-cpu": {"idle"}, "server-idle-cpu": {"idle"}, "rss-idle": {"idle"},
    "throughput": {"direct"}, "rss-throughput": {"direct"},
    "throughput-relayed": {"blocked", "relayed"}, "relay-cpu": {"blocked", "relayed"},
    "relayed-ratio": {"direct", "blocked", "relayed"}, "server-share": {"direct", "blocked", "relayed"},
}
ALL_PHASES: Final = {"one-side", "blocked", "idle", "direct", "relayed", "peers"}

PATH_NOTES: Final = (
    "meshctl: direct = WireGuard (Debian's wireguard-go) between the two NATs' public addresses, found with "
    "STUN and call-me-maybe through the relay; relayed = WireGuard to the relay's channel ports, which "
    "forward ciphertext (meshctl itself is in neither data path).",
    "Nebula 1.6.1: direct = punched through both NATs with the lighthouse's help (punchy.respond, default "
    "1 s delay); relayed = through the lighthouse's relay (am_relay), ciphertext forwarded. With a relay "
    "configured Nebula 1.6.1 stays on it once the relay handshake wins, so the direct-path sessions run "
    "the devices without `relay.relays`.",
    "tinc 1.0.36: no NAT traversal; both devices keep a TCP meta connection to the hub, and packets go over "
    "UDP to the peer's address the hub reports once tinc's MTU probes get through (they do here: both NATs "
    "keep the port), else through the hub, which decrypts and re-encrypts them (tinc 1.0 also sends the "
    "session keys through it). PingInterval 25 s (default 60 s: the lab NATs' 30 s UDP timeout dropped "
    "the direct path after 40 s idle).",
)


@dataclass
class Options:
    rounds: int
    seconds: float
    idle: float
    settle: float
    peers: int
    only: list[str]
    json_path: Path | None

    @property
    def phases(self) -> set[str]:
        if not self.only:
            return set(ALL_PHASES)
        return set().union(*(PHASES[row] for row in self.only))


def parse_args(argv: Sequence[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="each iperf3 run (default 5)")
    ap.add_argument("--idle", type=float, default=60.0,
                    help="idle window in the first round, seconds (default 60: one meshctl sync interval)")
    ap.add_argument("--settle", type=float, default=5.0, help="wait before the idle window (default 5)")
    ap.add_argument("--peers", type=int, default=10, help="meshctl's peer count for the new-peer and "
                    "ten-peer idle rows (default 10; 0 or 1 skips them)")
    ap.add_argument("--only", action="append", default=[], choices=report.ROW_KEYS, metavar="ROW",
                    help=f"measure only this row (repeatable): {', '.join(report.ROW_KEYS)}")
    ap.add_argument("--quick", action="store_true",
                    help="one round, 2 s iperf3 runs, 5 s idle, no new peers (a smoke run)")
    ap.add_argument("--json", type=Path, dest="json_path", help="write every sample and the conditions here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.idle, args.settle, args.peers = 1, 2.0, 5.0, 1.0, 0
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.seconds <= 0 or args.idle <= 0 or args.settle < 0 or args.peers < 0:
        ap.error("--seconds and --idle must be positive, --settle and --peers not negative")
    return Options(args.rounds, args.seconds, args.idle, args.settle, args.peers, args.only, args.json_path)


class SessionFailed(Exception):
    """One start of one system did not work out; the bench records it and goes on."""


def _versions() -> dict[str, str]:
    out = {}
    for name, argv in (("meshctl", [*meshctl_argv(), "version"]), ("nebula", ["nebula", "-version"]),
                       ("tinc", ["tincd", "--version"]), ("wireguard-go", ["dpkg-query", "-W", "wireguard-go"]),
                       ("iperf3", ["iperf3", "--version"])):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        out[name] = (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else "?"
    return out


@dataclass
class Bench:
    opts: Options
    lab: Lab
    net: Topology
    samples: report.Samples = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def record(self, metric: str, system: str, sample: report.Sample) -> None:
        report.record(self.samples, metric, system, sample)

    # -- measurements ------------------------------------------------------------------------

    def node_cpu(self, system: PeerSystem,
                 nodes: Sequence[Node]) -> dict[str, dict[str, dict[int, procstat.CpuReading]]]:
        return {node.ns: {part: procstat.read_cpu_of(pids) for part, pids in system.processes(node).items()}
                for node in nodes}

    def node_rss(self, system: PeerSystem, node: Node) -> dict[str, float | None]:
        """MiB per part of a node (the agent's processes summed, wireguard-go apart)."""
        out: dict[str, float | None] = {}
        for part, pids in system.processes(node).items():
            out[part] = sum(procstat.read_rss_kib(p) for p in pids) / 1024 if pids else None
        return out

    def first_replies(self, targets: Sequence[tuple[Node, str]], launch: Callable[[], None],
                      timeout_s: float) -> dict[str, float | None]:
        """Probers on each (node, destination) first, then `launch`; seconds from the launch to each
        node's first reply, by node name."""
        probers = {node.name: start_prober(self.lab, node, dst, timeout_s) for node, dst in targets}
        t0 = time.monotonic()
        launch()
        replies = {name: prober_reply(p, timeout_s + 5) for name, p in probers.items()}
        return {name: (None if at is None else at - t0) for name, at in replies.items()}

    def check_equal(self, system: PeerSystem) -> None:
        """Read back what must be equal for all three: MTU and the devices' UDP buffers."""
        a = self.net.devices[0]
        mtu = link_mtu(self.lab, a, system.tunnel_ifname(a))
        buffers = socket_buffers(self.lab, a, system.port)
        self.meta.setdefault("mtu", {})[system.name] = mtu
        self.meta.setdefault("udp_buffers", {})[system.name] = buffers
        if mtu != TUNNEL_MTU:
            self.say(f"  WARNING: {system.name}'s tunnel MTU is {mtu}, not {TUNNEL_MTU}")

    def idle_window(self, system: PeerSystem, nodes: Sequence[Node], cpu_metric: str, rss_metric: str,
                    server: bool) -> None:
        time.sleep(self.opts.settle)
        before = self.node_cpu(system, nodes)
        server_before = procstat.read_cpu_of(system.server_pids()) if server else {}
        start = time.monotonic()
        time.sleep(self.opts.idle)
        wall = time.monotonic() - start
        after = self.node_cpu(system, nodes)
        for node in nodes:
            self.record(cpu_metric, system.name, {
                part: procstat.tree_cpu_used(before[node.ns].get(part, {}), readings) / wall * 100
                for part, readings in after[node.ns].items()})
            self.record(rss_metric, system.name, self.node_rss(system, node))
        if server:
            used = procstat.tree_cpu_used(server_before, procstat.read_cpu_of(system.server_pids()))
            self.record("server_idle_cpu", system.name, used / wall * 100)

    def throughput(self, system: PeerSystem, relayed: bool) -> None:
        a, b = self.net.devices
        waited = wait_settled(self.lab, self.net, system, relayed=relayed, timeout_s=SETTLE_TIMEOUT_S)
        if waited is None:
            self.say(f"  {system.name}: the {'relayed' if relayed else 'direct'} path did not settle within "
                     f"{SETTLE_TIMEOUT_S:g} s; measuring anyway (see the server's share)")
        server = self.lab.popen(b, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        mode = "relayed" if relayed else "direct"
        try:
            poll(lambda: self.lab.run(b, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"]).stdout.strip() != "",
                 "iperf3 server")
            main_part = next(iter(system.processes(a)))
            rss_runs: dict[str, float | None] = {"start": self._main_rss(system, main_part)}
            for n, reverse in enumerate((False, True), start=1):
                rx0 = wan_rx_bytes(self.lab, system.server)
                cpu0 = procstat.read_cpu_of(system.server_pids())
                run = iperf3(self.lab, a, system.tunnel_ip(b), self.opts.seconds, reverse=reverse)
                used = procstat.tree_cpu_used(cpu0, procstat.read_cpu_of(system.server_pids()))
                share = (wan_rx_bytes(self.lab, system.server) - rx0) / max(run.bytes, 1)
                mbit = run.bits_per_second / 1e6
                self.record(f"throughput_{mode}", system.name, mbit)
                self.record(f"share_{mode}", system.name, share)
                if relayed and mbit > 0:
                    self.record("server_cpu_per_100", system.name, used / run.seconds * 100 / (mbit / 100))
                rss_runs[f"run {n}"] = self._main_rss(system, main_part)
                self.say(f"  {system.name} {mode} {'b->a' if reverse else 'a->b'}: {mbit:.0f} Mbit/s, "
                         f"server share {share:.2f}")
            self.record(f"rss_runs_{mode}", system.name, rss_runs)
        finally:
            self.lab.kill(server)
        if not relayed:
            for node in (a, b):
                self.record("rss_throughput", system.name, self.node_rss(system, node))

    def _main_rss(self, system: PeerSystem, part: str) -> float | None:
        """Mean RSS (MiB) over both devices of the process that carries the data (wireguard-go for
        meshctl: the agent is not in the data path)."""
        part = "wireguard-go" if system.name == "meshctl" else part
        values = [self.node_rss(system, node).get(part) for node in self.net.devices]
        numbers = [v for v in values if v is not None]
        return sum(numbers) / len(numbers) if numbers else None

    # -- a start, a session, a turn -----------------------------------------------------------

    def session(self, system: PeerSystem, pingers: Sequence[str], *, relayed: bool = False, idle: bool = False,
                throughput: bool = False) -> None:
        """Start both devices' daemons with the `pingers` ("a", "b") pinging; then measure."""
        a, b = self.net.devices
        for nat in (self.net.topo.nat_a, self.net.topo.nat_b):
            self.lab.flush_conntrack(nat)
        if relayed:
            block_direct(self.lab, self.net)
        try:
            system.start_server()

            def launch() -> None:
                for node in (a, b):
                    system.launch(node, relayed=relayed)

            targets = {"a": (a, system.tunnel_ip(b)), "b": (b, system.tunnel_ip(a))}
            replies = self.first_replies([targets[p] for p in pingers], launch, PROBE_TIMEOUT_S)
            metric = ("first_reply_blocked" if relayed else "first_reply_both" if len(pingers) > 1
                      else "first_reply")
            self.record(metric, system.name, replies)
            errors = [e for e in (system.launch_error(a), system.launch_error(b)) if e]
            text = ", ".join(f"{side} {'none' if v is None else f'{v:.2f} s'}" for side, v in replies.items())
            self.say(f"  {system.name} {'blocked' if relayed else 'open'} path, {'+'.join(pingers)} pinging: "
                     f"first reply {text}")
            if errors:
                raise SessionFailed("; ".join(errors))
            if None in replies.values():
                raise SessionFailed(f"no echo reply within {PROBE_TIMEOUT_S:g} s")
            for node in (a, b):
                system.after_start(node)
            if not relayed:
                for node in (a, b):
                    self.record("rss_start", system.name, self.node_rss(system, node))
                self.check_equal(system)
            if idle:
                self.idle_window(system, (a, b), "idle_cpu", "rss_idle", server=True)
            if throughput:
                self.throughput(system, relayed)
        finally:
            for node in (a, b):
                try:
                    system.stop(node)
                except Exception as exc:  # noqa: BLE001 - a stop that fails must not hide the first error
                    self.say(f"  {system.name}: stopping on {node.name} failed: {exc}")
            system.stop_server()
            if relayed:
                unblock_direct(self.lab, self.net)

    def turn(self, system: PeerSystem, round_no: int) -> None:
        phases = self.opts.phases
        self.meta.setdefault("load_per_turn", []).append((system.name, round_no, load_average()))
        if "one-side" in phases:
            self.guarded_session(system, round_no, ("a",))
            self.guarded_session(system, round_no, ("b",))
        self.guarded_session(system, round_no, ("a", "b"), idle=round_no == 0 and "idle" in phases,
                             throughput="direct" in phases)
        if "blocked" in phases:
            self.guarded_session(system, round_no, ("a", "b"), relayed=True, throughput="relayed" in phases)

    def guarded_session(self, system: PeerSystem, round_no: int, pingers: Sequence[str], *, relayed: bool = False,
                        idle: bool = False, throughput: bool = False) -> None:
        try:
            self.session(system, pingers, relayed=relayed, idle=idle, throughput=throughput)
        except (SessionFailed, RuntimeError) as exc:
            self.meta.setdefault("failures", []).append(f"round {round_no + 1} {system.name}: {exc}")
            self.say(f"  {system.name}: FAILED: {str(exc)[:2000]}")

    # -- meshctl with more peers ----------------------------------------------------------------

    def new_peers(self, meshctl: Meshctl) -> None:
        """N-1 new devices while a and b run (see the module docstring), then an idle window."""
        lab, mesh, relay = self.lab, self.net.mesh, self.net.relay
        a, b = self.net.devices
        sync_at = relay.argv.index("--sync-interval") + 1
        relay.argv[sync_at] = RELAY_SYNC_NEW_PEERS_S  # it must admit each newcomer soon
        for nat in (self.net.topo.nat_a, self.net.topo.nat_b):
            lab.flush_conntrack(nat)
        meshctl.start_server()
        try:
            mesh.up_together(("a", "b"))
            for k in range(1, self.opts.peers):
                replies = self.new_peer(meshctl, k)
                self.record("new_peer", "meshctl", replies)
                text = " / ".join("none" if v is None else f"{v:.2f} s" for v in replies.values())
                self.say(f"  meshctl new peer c{k}: first reply new / a {text}")
            for member in mesh.members:  # everyone on the last serial before the quiet window
                mesh.up(member)
            self.idle_window(meshctl, (a, b), "idle_cpu_ten", "rss_ten", server=False)
        finally:
            relay.argv[sync_at] = f"{RELAY_SYNC_S:g}"
            for member in mesh.members:
                mesh.meshctl(member, "down", check=False)
            meshctl.stop_server()

    def new_peer(self, meshctl: Meshctl, k: int) -> dict[str, float | None]:
        """Device c<k> behind its own NAT joins; from the approval's push (its agent started and a
        and b asked to sync at that moment) to the first echo reply on c<k> and on a."""
        lab, mesh = self.lab, self.net.mesh
        a = self.net.devices[0]
        name, ip = f"c{k}", f"{NEW_PEER_NET}.{k}"
        host = lab.host(name)
        nat = lab.nat_router(f"nat-{name}", PORT_RESTRICTED, [host])
        mesh.join(host, name, endpoint=f"{nat.public_ip}:{meshctl.port}")
        # One side pings, in turn, as in the first rows (both at once would add WireGuard's 5 s retry).
        side, prober = (("new", start_prober(lab, host, meshctl.tunnel_ip(a), NEW_PEER_TIMEOUT_S)) if k % 2
                        else ("a", start_prober(lab, a, ip, NEW_PEER_TIMEOUT_S)))
        mesh.approve(name, "--ip", ip)  # merged and pushed when it returns
        pushed = time.monotonic()
        meshctl.launch(host, relayed=False)
        pokes = [threading.Thread(target=mesh.up, args=(member,)) for member in ("a", "b")]
        for t in pokes:
            t.start()
        for t in pokes:
            t.join()
        at = prober_reply(prober, NEW_PEER_TIMEOUT_S + 5)
        error = meshctl.launch_error(host)
        if error:
            raise SessionFailed(error)
        return {side: None if at is None else at - pushed}


def run(opts: Options) -> int:
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_start = load_average()
    with open_lab("peers") as lab:
        t0 = time.monotonic()
        net = build_topology(lab)
        bench = Bench(opts, lab, net)
        peers = systems(net)
        bench.meta["lab"] = f"{lab.prefix}-{lab.run_id}"
        print(f"lab {bench.meta['lab']} built in {time.monotonic() - t0:.0f} s; load average {load_start:.2f} "
              "at start", flush=True)
        for r in range(opts.rounds):
            print(f"round {r + 1} of {opts.rounds}", flush=True)
            for system in peers:
                bench.turn(system, r)
        if "peers" in opts.phases and opts.peers > 1:
            print(f"meshctl with {opts.peers} peers", flush=True)
            try:
                bench.new_peers(peers[0])
            except SessionFailed as exc:
                bench.meta.setdefault("failures", []).append(f"new peers: {exc}")
                print(f"  new peers: FAILED: {exc}", flush=True)
        elapsed = time.monotonic() - t0
    bench.meta.update({
        "started": started, "elapsed_s": round(elapsed, 1), "cpus": os.cpu_count(),
        "load_start": load_start, "load_end": load_average(), "versions": _versions(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "paths": list(PATH_NOTES),
    })
    print_results(bench, opts)
    return 1 if bench.meta.get("failures") and not bench.samples else 0


def print_results(bench: Bench, opts: Options) -> None:
    rows = report.build_rows(bench.samples)
    if opts.only:
        rows = [(row, cells) for row, cells in rows if row.key in opts.only]
    meta = bench.meta
    loads = [load for _, _, load in meta.get("load_per_turn", [])]
    print()
    print(f"{meta['cpus']} CPUs, shared; load average {meta['load_start']:.2f} at start, "
          f"{min(loads, default=0):.2f}-{max(loads, default=0):.2f} over the turns, {meta['load_end']:.2f} at end; "
          f"{meta['elapsed_s']:.0f} s")
    print(f"{opts.rounds} rounds; iperf3 {opts.seconds:g} s each way; idle "
          f"{opts.idle:g} s; versions: " + "; ".join(f"{v}" for v in meta["versions"].values()))
    print("equal settings read back: MTU " + ", ".join(f"{k} {v}" for k, v in meta.get("mtu", {}).items())
          + "; UDP buffers rcv/snd (a's daemon) " + ", ".join(
              f"{k} " + " ".join(f"{r // 2**20}/{s // 2**20} MiB" for r, s in v)
              for k, v in meta.get("udp_buffers", {}).items()))
    print()
    print(report.markdown_table(rows))
    print()
    for note in PATH_NOTES:
        print(f"- {note}")
    for mode in ("direct", "relayed"):
        runs = bench.samples.get(f"rss_runs_{mode}", {})
        if runs:
            print(f"- data-plane process RSS, MiB (start -> after each iperf3 run, {mode}): " + "; ".join(
                f"{system} " + ", ".join(" -> ".join(report.fmt(v) for v in (s or {}).values())
                                         for s in samples if isinstance(s, dict))
                for system, samples in runs.items()))
    for failure in meta.get("failures", []):
        print(f"- FAILED: {failure[:500]}")
    print()
    print(report.summary_line(report.summary(rows)))
    if opts.json_path is not None:
        doc = report.to_json(bench.samples, rows, meta)
        opts.json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"samples and conditions written to {opts.json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    require_root()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"cannot run: missing {', '.join(missing)} (Debian: make deps installs APT_PACKAGES)", file=sys.stderr)
        return 2
    try:
        return run(opts)
    except KeyboardInterrupt:
        print("\ninterrupted: the lab is removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
