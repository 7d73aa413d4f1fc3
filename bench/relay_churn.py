"""100 concurrent relay clients connecting and leaving: is the relay's memory and fd use stable?

    .venv/bin/python bench/relay_churn.py [--clients 100] [--seconds 60] [--tcp-share 0.25]
    .venv/bin/python bench/relay_churn.py --seconds 300          # the issue's 5 minutes

`meshctl relay` runs as its own process on loopback (UDP + TCP on one port). Each simulated
device logs in (UDP, or TCP for --tcp-share of them), sends a few packets to another member,
asks for a channel to it (UDP devices: bind it from their own "WireGuard" socket and send a
few packets through it), stays 0.2-2 s, leaves, waits up to 0.5 s and comes back, until
--seconds have passed. Every 5 s the relay's RSS, open fds, connected clients and open
channels are sampled. A leak shows as growth from the first full-load sample to the last
one, and as fds above the idle baseline at the end (each channel holds up to four sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "relay"))

from relay_support import make_relay_mesh  # noqa: E402

from meshctl.identity import DeviceKeys  # noqa: E402
from meshctl.keys import NodePublic, load_signing_key  # noqa: E402
from meshctl.relay.channels import marshal_bind  # noqa: E402
from meshctl.relay.client import RelayClient, RelayClientConfig  # noqa: E402

SAMPLE_S = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        port = int(u.getsockname()[1])
        t.bind(("127.0.0.1", port))  # the relay needs both
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def gauges(metrics_port: int) -> tuple[int, int]:
    """(clients, channels) from the relay's metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {line.split()[0]: int(line.split()[1]) for line in text.splitlines()
              if line.startswith(("meshctl_relay_clients ", "meshctl_relay_channels "))}
    return values.get("meshctl_relay_clients", -1), values.get("meshctl_relay_channels", -1)


async def use_channel(client: RelayClient, peer: NodePublic, wg: socket.socket, stats: dict[str, int]) -> None:
    """Ask for a channel to `peer`; once offered, bind it from `wg` and send through it."""
    client.request_channel(peer)
    for _ in range(50):
        info = client.channels.get(peer.raw)
        if info is not None:
            wg.sendto(marshal_bind(info.bind_token), ("127.0.0.1", info.port))
            for _ in range(5):
                wg.sendto(b"\x04\x00\x00\x00channel", ("127.0.0.1", info.port))
            stats["channels"] += 1
            return
        await asyncio.sleep(0.02)


async def device(name: str, keys: DeviceKeys, others: list[NodePublic], cfg: RelayClientConfig,
                 deadline: float, stats: dict[str, int]) -> None:
    rng = random.Random(name)
    wg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # this device's "WireGuard" port
    wg.bind(("127.0.0.1", 0))
    wg.setblocking(False)
    while time.monotonic() < deadline:
        client = RelayClient(cfg, keys.identity, keys.wireguard.public(), lambda s, d: None)
        await client.start()
        try:
            if await client.wait_connected(15):
                stats["sessions"] += 1
                peer = rng.choice(others)
                for _ in range(5):
                    client.send(peer, b"\x04\x00\x00\x00churn")
                if client.transport == "udp":
                    await use_channel(client, peer, wg, stats)
                await asyncio.sleep(rng.uniform(0.2, 2.0))
            else:
                stats["failed"] += 1
        finally:
            await client.stop()
        await asyncio.sleep(rng.uniform(0.0, 0.5))
    wg.close()


async def run(args: argparse.Namespace, mesh_dir: Path, state_dir: Path) -> None:
    t_build = time.monotonic()
    names = tuple(f"d{i:03d}" for i in range(args.clients))
    mesh = make_relay_mesh(mesh_dir, names)
    print(f"built a mesh of {len(names)} members in {time.monotonic() - t_build:.1f} s", flush=True)
    port, metrics_port = free_port(), free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "meshctl", "relay", "--listen", f"127.0.0.1:{port}", "--repo", str(mesh.path),
         "--root", mesh.fingerprint, "--state-dir", str(state_dir), "--name", "home",
         "--metrics", f"127.0.0.1:{metrics_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert relay.stderr is not None
        seen = []
        for line in relay.stderr:  # log lines, then "relay home on ..." once it serves
            seen.append(line)
            if "relay home on" in line:
                break
        else:
            sys.exit("relay did not start:\n" + "".join(seen))
        # Drain the log (connects/disconnects) so the pipe never fills.
        asyncio.get_running_loop().run_in_executor(None, lambda: [None for _ in relay.stderr])  # type: ignore[union-attr]
        relay_key = load_signing_key(state_dir / "relay.key").public()
        base = {"rss": rss_mib(relay.pid), "fds": fds(relay.pid)}
        stats = {"sessions": 0, "failed": 0, "channels": 0}
        deadline = time.monotonic() + args.seconds
        tasks = []
        for i, name in enumerate(names):
            keys = mesh.devices[name]
            others = [mesh.devices[n].wireguard.public() for n in names if n != name]
            tcp = i < args.clients * args.tcp_share
            cfg = RelayClientConfig(f"127.0.0.1:{port}", mesh.network_id, relay_name="home", relay_key=relay_key,
                                    transports=("tcp",) if tcp else ("udp",))
            tasks.append(asyncio.create_task(device(name, keys, others, cfg, deadline, stats)))
        samples = []
        start = time.monotonic()
        print(f"{'t (s)':>6}{'RSS MiB':>10}{'fds':>6}{'clients':>9}{'channels':>10}{'sessions':>10}", flush=True)
        print(f"{'idle':>6}{base['rss']:>10.1f}{base['fds']:>6}{0:>9}{0:>10}{0:>10}", flush=True)
        while time.monotonic() < deadline:
            await asyncio.sleep(SAMPLE_S)
            clients, channels = await asyncio.to_thread(gauges, metrics_port)
            s = (time.monotonic() - start, rss_mib(relay.pid), fds(relay.pid), clients, channels, stats["sessions"])
            samples.append(s)
            print(f"{s[0]:>6.0f}{s[1]:>10.1f}{s[2]:>6}{s[3]:>9}{s[4]:>10}{s[5]:>10}", flush=True)
        await asyncio.gather(*tasks)
        await asyncio.sleep(2.0)
        end = {"rss": rss_mib(relay.pid), "fds": fds(relay.pid)}
        left = (await asyncio.to_thread(gauges, metrics_port))[1]
        print(f"{'end':>6}{end['rss']:>10.1f}{end['fds']:>6}{'':>9}{left:>10}{stats['sessions']:>10}"
              "  (all clients gone)")
        full = samples[1:] or samples  # skip the ramp-up sample
        first, last = full[0], full[-1]
        print(f"sessions: {stats['sessions']} ok, {stats['failed']} failed to connect, "
              f"{stats['sessions'] / args.seconds:.1f} logins/s; {stats['channels']} channels offered and used")
        print(f"RSS under load: {first[1]:.1f} -> {last[1]:.1f} MiB ({last[1] - first[1]:+.1f}); "
              f"max {max(s[1] for s in full):.1f} MiB")
        print(f"fds: idle {base['fds']}, under load {min(s[2] for s in full)}..{max(s[2] for s in full)}, "
              f"after {end['fds']} ({end['fds'] - base['fds']:+d} vs idle)")
    finally:
        relay.terminate()
        relay.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--tcp-share", type=float, default=0.25, help="fraction of devices using the TCP transport")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-churn-") as tmp:
        asyncio.run(run(args, Path(tmp) / "coord", Path(tmp) / "relay-state"))


if __name__ == "__main__":
    main()
