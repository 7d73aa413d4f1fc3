#!/usr/bin/env python3
"""ACL compile and nftables apply time for a large mesh: 1,000 peers and 100 rules.

Builds a policy of 100 rules over 20 groups, 20 tags, single users, CIDRs and
`autogroup:member`, and a NetMap of 1,000 peers (800 user devices, 200 tagged
servers). Measures, for one busy server node: parsing the policy, compiling that
node's filter, rendering the nft JSON, applying it with `nft -j -f -` in a fresh
network namespace (first load, then a replace with a changed policy), and the
read-back comparison that skips an unchanged apply. The baseline in the same run
is applying the bare skeleton (the same table and chains, no policy rules): the
ratio shows what the policy's rules cost over nft's fixed cost.

    sudo .venv/bin/python bench/acl_apply.py [--repeat 7]

Goal (issue 6): apply under 0.5 s.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshctl.coord.netmap import NetMap, NetworkSettings, Peer  # noqa: E402
from meshctl.firewall import nft  # noqa: E402
from meshctl.firewall.apply import apply_filter, read_table  # noqa: E402
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey  # noqa: E402
from meshctl.policy.compile import PacketFilter, compile_filter  # noqa: E402
from meshctl.policy.parse import parse_policy  # noqa: E402

PEERS = 1000
TAGGED = 200
TAGS = 20
GROUPS = 20
USERS = 200
RULES = 100
GOAL_APPLY_S = 0.5
INTERFACE = "mesh0"
NODE = "srv000"  # tag:t0: the most targeted server


def build_netmap(policy_text: str) -> NetMap:
    ident, wg, disco = (
        SigningKey.generate().public(),
        NodePrivate.generate().public(),
        DiscoPrivate.generate().public(),
    )
    peers = []
    for i in range(PEERS):
        tagged = i < TAGGED
        peers.append(
            Peer(
                name=f"srv{i:03d}" if tagged else f"dev{i:04d}",
                identity_key=ident,
                wg_public_key=wg,
                disco_key=disco,
                addresses=(
                    ipaddress.ip_address(f"100.64.{i // 250}.{i % 250 + 1}"),
                    ipaddress.ip_address(f"fd7a:115c:a1e0::{i + 1:x}"),
                ),
                tags=(f"tag:t{i % TAGS}",) if tagged else (),
                owner=f"u{i % USERS}@example.com",
            )
        )
    return NetMap(
        network=NetworkSettings(
            "bench", "bench", ipaddress.IPv4Network("100.64.0.0/10"), ipaddress.IPv6Network("fd7a:115c:a1e0::/48"), "b"
        ),
        serial=1,
        expires=2_000_000_000,
        state_sha256="0" * 64,
        peers=tuple(sorted(peers, key=lambda p: p.name)),
        policy_text=policy_text,
    )


def build_policy(seed: int) -> str:
    rnd = random.Random(seed)
    groups = {f"group:g{g}": [f"u{u}@example.com" for u in range(g * 10, g * 10 + 10)] for g in range(GROUPS)}
    tag_owners = {f"tag:t{t}": ["group:g0"] for t in range(TAGS)}

    def src() -> str:
        return rnd.choice(
            [
                f"group:g{rnd.randrange(GROUPS)}",
                f"tag:t{rnd.randrange(TAGS)}",
                f"u{rnd.randrange(USERS)}@example.com",
                f"100.64.{rnd.randrange(4)}.0/26",
                "autogroup:member",
            ]
        )

    def dst() -> str:
        target = f"tag:t{rnd.randrange(3)}" if rnd.random() < 0.7 else "autogroup:member"
        ports = rnd.choice(["22", "443", "80,443", "8000-8100", "*", "5432", "9100-9101"])
        return f"{target}:{ports}"

    acls = [
        {"action": "accept", "src": [src() for _ in range(rnd.randint(1, 3))], "dst": [dst() for _ in range(2)]}
        | ({"proto": rnd.choice(["tcp", "udp"])} if rnd.random() < 0.3 else {})
        for _ in range(RULES)
    ]
    return json.dumps({"groups": groups, "tagOwners": tag_owners, "acls": acls}, indent=1)


def timed(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: applies rules with nft in a scratch network namespace")

    text_a, text_b = build_policy(1), build_policy(2)
    netmap = build_netmap(text_a)
    policy_a, policy_b = parse_policy(text_a), parse_policy(text_b)
    pf_a = compile_filter(policy_a, netmap, NODE)
    pf_b = compile_filter(policy_b, netmap, NODE)
    skeleton = PacketFilter(pf_a.node, pf_a.addresses, (), ())
    doc = nft.replace_document(pf_a, INTERFACE)
    nft_rules = sum(1 for c in doc["nftables"] if isinstance(c, dict) and "rule" in c.get("add", {}))  # type: ignore[operator]
    elements = json.dumps(doc).count('"100.64.') + json.dumps(doc).count('"fd7a:')

    rows: list[tuple[str, float, str]] = []
    rows.append(("parse policy (100 rules)", timed(lambda: parse_policy(text_a), args.repeat), ""))
    rows.append(("compile filter for one node", timed(lambda: compile_filter(policy_a, netmap, NODE), args.repeat), ""))
    rows.append(("render nft JSON", timed(lambda: json.dumps(nft.replace_document(pf_a, INTERFACE)), args.repeat), ""))

    ns = f"aclb-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # Alternate two policies so that every timed apply really replaces the table.
        flip = [pf_a, pf_b]

        def replace() -> None:
            flip.reverse()
            assert apply_filter(flip[0], INTERFACE, ns)

        names = [INTERFACE, INTERFACE + "x"]

        def replace_skeleton() -> None:
            names.reverse()  # the interface name differs, so each apply really replaces
            assert apply_filter(skeleton, names[0], ns)

        base = timed(replace_skeleton, args.repeat)
        apply_s = timed(replace, args.repeat)
        apply_filter(pf_a, INTERFACE, ns)
        skip = timed(lambda: apply_filter(pf_a, INTERFACE, ns), args.repeat)
        readback = timed(lambda: read_table(ns), args.repeat)
        rows.append(("baseline: apply skeleton (no rules)", base, "1.00x"))
        rows.append(("apply (replace, nft -j -f -)", apply_s, f"{apply_s / base:.2f}x"))
        rows.append(("  of which read-back compare", readback, ""))
        rows.append(("apply when unchanged (skipped)", skip, f"{skip / base:.2f}x"))
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    print(
        f"ACL apply: {PEERS} peers, {RULES} rules, node {NODE}: {len(pf_a.rules)} filter rules -> "
        f"{nft_rules} nft rules, {elements} address elements; median of {args.repeat}"
    )
    print(f"{'step':40} {'seconds':>9} {'vs baseline':>12}")
    for name, seconds, ratio in rows:
        print(f"{name:40} {seconds:9.4f} {ratio:>12}")
    verdict = "meets" if apply_s < GOAL_APPLY_S else "MISSES"
    print(f"goal: apply < {GOAL_APPLY_S} s: {verdict} ({apply_s:.3f} s)")


if __name__ == "__main__":
    main()
