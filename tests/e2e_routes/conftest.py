"""Fixtures for the routes end-to-end tests: lab.topology.RoutedSite with its members joined,
approved and running, shared by the module (tests run in file order; the last ones change the
mesh for good).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import lab_unavailable, open_lab
from lab.scenario import MeshScenario, build_routed_mesh

E2E_TOOLS = ("wireguard-go", "wg", "git", "ping", "nft", "dig")
UPSTREAM_DNS = Path(__file__).resolve().parent.parent / "e2e_dns" / "upstream_dns.py"


def need_e2e() -> None:
    reason = lab_unavailable(E2E_TOOLS)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def routed() -> Iterator[tuple[MeshScenario, object]]:
    """The mesh and its RoutedSite; client-a accepts routes, client-b does not. A DNS server on
    the gateway (client-a's LAN resolver, forwarded to by its MagicDNS)."""
    need_e2e()
    with open_lab() as lab:
        mesh, site = build_routed_mesh(lab)
        dns = lab.popen(site.gw, [sys.executable, str(UPSTREAM_DNS), str(site.gw.ipv4), "53"],
                        stdout=subprocess.PIPE)
        assert dns.stdout is not None and dns.stdout.readline().strip() == "ready"
        resolv = Path("/etc/netns") / site.client_a.ns / "resolv.conf"
        resolv.write_text(f"nameserver {site.gw.ipv4}\n")
        try:
            for name in ("r1", "r2", "ex", "client-b"):
                mesh.up(name)
            mesh.up("client-a", "--accept-routes")
            yield mesh, site
        finally:
            downs = [lab.meshctl_popen(m.node, ["down"]) for m in mesh.members.values()]
            for proc in downs:
                proc.wait(60)
