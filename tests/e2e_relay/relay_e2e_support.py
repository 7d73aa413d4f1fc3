"""Helpers for the relay end-to-end tests: two devices behind NATs, a relay on the internet,
agents up (lab/scenario.build_relay_mesh)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, TwoNats, lab_unavailable
from lab.scenario import MeshScenario, RelayBox, build_relay_mesh
from meshctl.agent.control import query_agent

RELAY_NAME = "r1"


def need_lab() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool in ("wireguard-go", "wg", "turnserver", "git", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` on PATH")


def other(name: str) -> str:
    return "b" if name == "a" else "a"


@dataclass
class RelayedMesh:
    lab: Lab
    mesh: MeshScenario
    topo: TwoNats
    relay: RelayBox

    def up_both(self) -> None:
        """`meshctl up` on both devices at the same time (as two people would)."""
        self.mesh.up_together(("a", "b"))

    def peer_status(self, name: str) -> dict[str, Any]:
        peers = {p["name"]: p for p in self.mesh.status(name)["peers"]}
        return dict(peers[other(name)])

    def agent_status(self, name: str) -> dict[str, Any]:
        """The agent's own status document (relay clients included), over its control socket."""
        state_dir = Path(self.lab.meshctl_env(self.mesh.members[name].node)["MESHCTL_STATE_DIR"])
        return query_agent(state_dir / "agent.sock", {"cmd": "status"}) or {}

    def public_ip(self, name: str) -> str:
        return str((self.topo.nat_a if name == "a" else self.topo.nat_b).public_ip)

    def is_relayed(self, name: str) -> bool:
        p = self.peer_status(name)
        return p["path"] == "relay" and p["relay"] == RELAY_NAME and p["endpoint"] is None

    def on_channel(self, name: str) -> bool:
        """Relayed through a relay channel: WireGuard itself sends to the relay's channel port."""
        endpoint = self.wg_endpoint(name)
        p = self.peer_status(name)
        return (self.is_relayed(name) and endpoint.startswith(f"{self.relay.node.ipv4}:")
                and endpoint != self.relay.address and p.get("relay_channel") == endpoint)

    def paths_report(self) -> str:
        """Both sides' view in full, for a failure message (pytest shortens a tuple's repr)."""
        lines = []
        for name in ("a", "b"):
            p = self.peer_status(name)
            lines.append(f"{name}: wg endpoint {self.wg_endpoint(name)}; path {p.get('path')} relay {p.get('relay')} "
                         f"endpoint {p.get('endpoint')} relay_channel {p.get('relay_channel')}")
        return "\n".join(lines) + "\n" + self.logs()

    def on_proxy(self, name: str) -> bool:
        """Relayed through the agent's loopback proxy (frames over the relay session)."""
        return self.is_relayed(name) and self.wg_endpoint(name).startswith("127.0.0.1:")

    def is_direct(self, name: str) -> bool:
        p = self.peer_status(name)
        return p["path"] == "direct" and str(p["endpoint"]).split(":")[0] == self.public_ip(other(name))

    def ping(self, src: str, count: int = 1, timeout_s: int = 1) -> bool:
        """An ICMP echo over the mesh (through WireGuard) from `src` to the other device."""
        return self.mesh.ping(src, self.mesh.members[other(src)].mesh_ipv4, count, timeout_s)

    def wg_endpoint(self, name: str) -> str:
        """The endpoint WireGuard itself uses for the other device (`wg show`)."""
        env = self.lab.meshctl_env(self.mesh.members[name].node)
        out = self.lab.run(self.mesh.members[name].node,
                           ["wg", "show", env["MESHCTL_INTERFACE"], "endpoints"]).stdout
        return out.split()[1] if out.split() else ""

    def relay_metrics(self) -> str:
        return self.relay.metrics()

    def agent_log(self, name: str) -> str:
        path = Path(self.lab.meshctl_env(self.mesh.members[name].node)["MESHCTL_STATE_DIR"]) / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return (f"--- a ---\n{self.agent_log('a')[-2500:]}\n--- b ---\n{self.agent_log('b')[-2500:]}"
                f"\n--- relay ---\n{self.relay.log()[-1500:]}")


def build(lab: Lab, profile_a: str, profile_b: str) -> RelayedMesh:
    mesh, topo, relay = build_relay_mesh(lab, profile_a, profile_b, relay_name=RELAY_NAME)
    return RelayedMesh(lab, mesh, topo, relay)


