"""Helpers for the NAT-traversal end-to-end tests: a two-NAT mesh with both agents up."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import pytest

from lab import Lab, TwoNats, lab_unavailable
from lab.scenario import MeshScenario, build_nat_mesh


def need_lab() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool in ("wireguard-go", "turnserver", "git", "conntrack"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` on PATH")


@dataclass
class NatMesh:
    lab: Lab
    mesh: MeshScenario
    topo: TwoNats

    def up_both(self) -> None:
        """`meshctl up` on both devices at the same time (as two people would)."""
        self.mesh.up_together(("a", "b"))

    def peer_status(self, name: str) -> dict[str, Any]:
        other = "b" if name == "a" else "a"
        peers = {p["name"]: p for p in self.mesh.status(name)["peers"]}
        return dict(peers[other])

    def public_ip(self, name: str) -> str:
        return str((self.topo.nat_a if name == "a" else self.topo.nat_b).public_ip)

    def is_direct(self, name: str) -> bool:
        """`name` sees the other device on a direct path at its NAT's public address."""
        other = "b" if name == "a" else "a"
        p = self.peer_status(name)
        return p["path"] == "direct" and str(p["endpoint"]).split(":")[0] == self.public_ip(other)

    def ping(self, src: str) -> bool:
        dst = self.mesh.members["b" if src == "a" else "a"].mesh_ipv4
        return self.mesh.ping(src, dst, 1, 1)

    def agent_log(self, name: str) -> str:
        path = self.lab.meshctl_env(self.mesh.members[name].node)["MESHCTL_STATE_DIR"] + "/agent.log"
        with open(path, errors="replace") as f:
            return f.read()


def build(lab: Lab, profile_a: str, profile_b: str) -> NatMesh:
    mesh, topo = build_nat_mesh(lab, profile_a, profile_b)
    return NatMesh(lab, mesh, topo)


