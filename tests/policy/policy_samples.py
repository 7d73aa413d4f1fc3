"""The sample policy and a small mesh that uses it (shared by policy and firewall tests)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from meshctl.coord.netmap import NetMap, NetworkSettings, Peer
from meshctl.keys import DiscoPublic, NodePublic, VerifyKey

SAMPLE_POLICY = Path(__file__).with_name("sample_policy.hujson")
TEMPLATE_POLICY = Path(__file__).resolve().parents[2] / "coord-repo-template" / "policy.hujson"

# name, last address byte, tags, owner
SAMPLE_PEERS: tuple[tuple[str, int, tuple[str, ...], str], ...] = (
    ("prod", 1, ("tag:prod",), "oscar@example.com"),
    ("dev-laptop", 2, (), "dana@example.com"),
    ("ops-laptop", 3, (), "oscar@example.com"),
    ("monitor", 4, ("tag:monitoring",), ""),
    ("dana-phone", 5, (), "dana@example.com"),
)


# name, last address byte, tags, owner: users with two devices, tagged devices (one owned, which
# tags override), owner-less untagged devices
MIXED_PEERS: tuple[tuple[str, int, tuple[str, ...], str], ...] = (
    ("a", 1, (), "a@x.com"),
    ("b", 2, (), "b@x.com"),
    ("a2", 3, (), "a@x.com"),
    ("s", 4, ("tag:s",), "a@x.com"),
    ("t", 5, ("tag:t", "tag:s"), ""),
    ("k", 6, (), ""),
    ("k2", 7, (), ""),
)


def quoted(items: Sequence[str]) -> str:
    """Items as the inside of a JSON list of strings."""
    return ", ".join(f'"{i}"' for i in items)


def make_peer(name: str, n: int, tags: Sequence[str] = (), owner: str = "") -> Peer:
    raw = n.to_bytes(2, "big") * 16
    return Peer(
        name=name,
        identity_key=VerifyKey(raw),
        wg_public_key=NodePublic(raw),
        disco_key=DiscoPublic(raw),
        addresses=(
            ipaddress.ip_address(f"100.64.{n // 256}.{n % 256}"),
            ipaddress.ip_address(f"fd7a:115c:a1e0::{n:x}"),
        ),
        tags=tuple(tags),
        owner=owner,
    )


def make_netmap(peers: Sequence[Peer], policy_text: str = "", self_name: str | None = None) -> NetMap:
    network = NetworkSettings(
        network_id="test",
        name="test",
        ipv4_cidr=ipaddress.IPv4Network("100.64.0.0/10"),
        ipv6_prefix=ipaddress.IPv6Network("fd7a:115c:a1e0::/48"),
        domain="test.mesh",
    )
    return NetMap(
        network=network,
        serial=1,
        expires=2_000_000_000,
        state_sha256="0" * 64,
        peers=tuple(sorted(peers, key=lambda p: p.name)),
        policy_text=policy_text,
        self_name=self_name,
    )


def uncomment_examples(text: str) -> str:
    """The template's policy with every commented-out example line made live."""
    return "\n".join(line.replace("// ", "", 1) if line.strip().startswith(('// "', '// {"')) else line
                      for line in text.splitlines())
