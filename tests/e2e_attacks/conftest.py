"""Fixtures for the attack tests (issue 23): see attack_support.py for the picture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from attack_support import AttackMesh, wait_until

from lab import lab_unavailable, open_lab
from lab.scenario import build_lan_mesh

TOOLS = ("wireguard-go", "wg", "git", "ping", "nft")


@pytest.fixture(scope="module")
def attack_mesh() -> Iterator[AttackMesh]:
    reason = lab_unavailable(TOOLS)
    if reason:
        pytest.skip(reason)
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 2, name="attacks")
        for name in ("node1", "node2"):
            mesh.up(name)
        am = AttackMesh(mesh, next(ns for ns in lab.namespaces if ns.endswith("-git")))
        try:
            wait_until(lambda: am.direct("node1", "node2") and am.direct("node2", "node1"), "a direct path", 60)
            yield am
        finally:
            for name in ("node1", "node2"):
                mesh.meshctl(name, "down", check=False)
