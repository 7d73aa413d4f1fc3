#!/usr/bin/env python3
"""The WireGuard part of a pass that changes nothing, at 10,000 peers (pure, no device needed).

A no-op pass reads the device back (wireguard-go's `get=1` reply, parsed by wg/uapi.py), builds
the desired peers (as agent/desired.py does) and plans (wg/config.py plan_update: empty). This
times those three on a reply shaped like wireguard-go's (an IPv4 /32 and an IPv6 /128 per peer,
an endpoint, a keepalive), with Python's cyclic collector on and paused (a pass runs with it
paused, agent/gcpause.py), the parsers' caches cleared before each run as in a fresh
`meshctl sync` (the agent's stay warm). Baseline in the same run: ipaddress.ip_network on the same 20,000
allowed-IP texts, which is what the parser used before.

    python bench/wg_noop_readback.py [--peers 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshctl.keys import NodePrivate, NodePublic  # noqa: E402
from meshctl.wg import config, uapi  # noqa: E402
from meshctl.wg.config import DeviceConfig, PeerConfig, plan_update  # noqa: E402
from meshctl.wg.uapi import parse_get_reply  # noqa: E402

PRIVATE = NodePrivate(bytes(range(32)))


def reply_and_peers(n: int) -> tuple[bytes, list[tuple[bytes, int, int, str]]]:
    lines = [f"private_key={PRIVATE.private_bytes_for_device().hex()}", "listen_port=51820"]
    peers = []
    for i in range(n):
        key = os.urandom(32)
        v4 = int(ipaddress.IPv4Address("100.64.0.0")) + i + 2
        v6 = int(ipaddress.IPv6Address("fd92:96ba:5f40::6440:0")) + i + 2
        endpoint = f"10.200.{i // 250}.{i % 250 + 1}:51820"
        lines += [f"public_key={key.hex()}", f"preshared_key={'0' * 64}", "protocol_version=1",
                  f"endpoint={endpoint}", "last_handshake_time_sec=0", "last_handshake_time_nsec=0",
                  "tx_bytes=0", "rx_bytes=0", "persistent_keepalive_interval=25",
                  f"allowed_ip={ipaddress.IPv4Address(v4)}/32", f"allowed_ip={ipaddress.IPv6Address(v6)}/128"]
        peers.append((key, v4, v6, endpoint))
    lines.append("errno=0")
    return ("\n".join(lines) + "\n\n").encode(), peers


def wanted(peers: list[tuple[bytes, int, int, str]]) -> DeviceConfig:
    return DeviceConfig(PRIVATE, 51820, tuple(
        PeerConfig(NodePublic(key), (ipaddress.IPv4Network(v4), ipaddress.IPv6Network(v6)), endpoint, 25)
        for key, v4, v6, endpoint in peers))


def clear_caches() -> None:
    for module in (uapi, config):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def median_s(fn: Callable[[], object], runs: int, collect: bool) -> float:
    times = []
    for _ in range(runs):
        clear_caches()
        gc.collect()
        (gc.enable if collect else gc.disable)()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        gc.enable()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data, peers = reply_and_peers(args.peers)
    texts = [line[len("allowed_ip="):] for line in data.decode().split("\n") if line.startswith("allowed_ip=")]
    state, config = parse_get_reply(data).state, wanted(peers)
    assert plan_update(state, config).is_empty(), "the bench's reply and config must agree"
    print(f"{args.peers} peers, {len(data) / 1e6:.1f} MB reply, median of {args.runs}")
    print(f"{'step':<44}{'collector on s':>16}{'paused s':>10}")
    rows: list[tuple[str, Callable[[], object]]] = [
        ("baseline: ip_network on every allowed IP", lambda: [ipaddress.ip_network(t, strict=False) for t in texts]),
        ("parse_get_reply", lambda: parse_get_reply(data)),
        ("desired peers (DeviceConfig)", lambda: wanted(peers)),
        ("plan_update (empty)", lambda: plan_update(state, config)),
        ("read + desired + plan", lambda: plan_update(parse_get_reply(data).state, wanted(peers))),
    ]
    for label, fn in rows:
        print(f"{label:<44}{median_s(fn, args.runs, True):>16.3f}{median_s(fn, args.runs, False):>10.3f}")


if __name__ == "__main__":
    main()
