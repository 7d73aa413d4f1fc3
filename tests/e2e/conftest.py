"""Fixtures for the end-to-end tests: a three-node LAN mesh shared by one test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import meshctl_up

from lab import lab_unavailable, open_lab
from lab.scenario import MeshScenario, build_lan_mesh

E2E_TOOLS = ("wireguard-go", "wg", "git", "ping", "ss")


def need_e2e() -> None:
    """Skip, saying exactly what is missing, unless a mesh can be built here."""
    reason = lab_unavailable(E2E_TOOLS)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def lan_mesh() -> Iterator[MeshScenario]:
    """node1..node3 on one LAN, joined, approved and merged, each running `meshctl up`.

    Module scoped: building it takes most of the module's time. Tests that change the
    mesh for good (revoke, down) come last in their module.
    """
    need_e2e()
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 3)
        for member in mesh.members.values():
            meshctl_up(lab, member.node)
        yield mesh
        # Stop the agents and wireguard-go (its socket lives outside the namespace) before the
        # lab deletes the namespaces; in parallel, each `down` is mostly interpreter start-up.
        downs = [lab.meshctl_popen(member.node, ["down"]) for member in mesh.members.values()]
        for proc in downs:
            proc.wait(60)
