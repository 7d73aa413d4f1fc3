"""Fixtures for the MagicDNS end-to-end tests: one three-node mesh per module.

    node1 (queries; its namespace's resolv.conf points at 127.0.0.35, where the test's
           dnslib upstream answers www.upstream.test)
    node2, node3 (peers to resolve; node3 is renamed through the repository)
    all on LAN "lan" with the git daemon host
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from dns_e2e_support import DnsMesh

from lab import LabError, lab_unavailable, open_lab
from lab.core import NETNS_ETC
from lab.scenario import build_lan_mesh

E2E_TOOLS: Final = ("wireguard-go", "wg", "git", "dig", "getent", "ping")
UPSTREAM_SCRIPT: Final = Path(__file__).resolve().with_name("upstream_dns.py")
UPSTREAM_PORT: Final = 53
MESH_NAME: Final = "dnsmesh"
DOMAIN: Final = f"{MESH_NAME}.mesh"  # `meshctl init --name N` without --domain: N.mesh
# node1's resolv.conf before `meshctl up` (the lab writes one per namespace; this one has a
# search list and options to carry over, and names no systemd-resolved stub: on a host running
# resolved, 127.0.0.53 would make MagicDNS choose split DNS through the *host's* resolved).
ORIGINAL_RESOLV_CONF: Final = (b"# node1: the resolver set-up before meshctl\n"
                               b"search corp.example\n"
                               b"nameserver 127.0.0.35\n"
                               b"options edns0 timeout:2\n")


def need_e2e() -> None:
    """Skip, saying exactly what is missing, unless a mesh can be built here."""
    reason = lab_unavailable(E2E_TOOLS)
    if reason:
        pytest.skip(reason)


def original_nameserver(text: str) -> str:
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            return words[1]
    raise LabError("the lab's resolv.conf names no nameserver")


@pytest.fixture(scope="module")
def dns_mesh() -> Iterator[DnsMesh]:
    need_e2e()
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 3, name=MESH_NAME)
        node1 = mesh.members["node1"].node
        resolv_conf = NETNS_ETC / node1.ns / "resolv.conf"  # bind-mounted by `ip netns exec`
        resolv_conf.write_bytes(ORIGINAL_RESOLV_CONF)  # node1's DNS set-up before meshctl
        original = resolv_conf.read_bytes()
        upstream = original_nameserver(original.decode())
        proc = lab.popen(node1, [sys.executable, str(UPSTREAM_SCRIPT), upstream, str(UPSTREAM_PORT)],
                         stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise LabError(f"the test's upstream DNS did not start: {lab.log_of(proc)}")
        try:
            for name in ("node1", "node2", "node3"):
                mesh.up(name)
            yield DnsMesh(mesh, DOMAIN, upstream, resolv_conf, original)
        finally:
            for name in mesh.members:  # stop the agents before the lab kills their namespaces
                mesh.meshctl(name, "down", check=False)
