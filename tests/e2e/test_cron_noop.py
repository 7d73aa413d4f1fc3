"""End-to-end: the no-op `meshctl sync` from cron (no agent) stays level-triggered.

A pass whose inputs and WireGuard device match the last full pass skips building the map
(agent/noop_pass.py). These tests check the device read it keeps is enough: a manual `wg set`
is healed by the very next sync, a dead wireguard-go is restarted, and an expired state is
still reported on a pass that changes nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator

import pytest
from e2e_support import interface, mesh_prefixes, state_dir, wg_dump

from lab import lab_unavailable, open_lab
from lab.scenario import MeshScenario, build_lan_mesh
from meshctl.agent.desired import KEEPALIVE_S
from meshctl.wg.userspace import find_wireguard_go

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def cron_mesh() -> Iterator[MeshScenario]:
    """Two nodes configured by `meshctl sync` alone."""
    reason = lab_unavailable() or next((f"needs `{t}`" for t in ("wireguard-go", "wg", "git", "ping")
                                        if shutil.which(t) is None), None)
    if reason:
        pytest.skip(reason)
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, 2)
        for name in mesh.members:
            mesh.meshctl(name, "sync")
        yield mesh
        for member in mesh.members.values():
            lab.meshctl(member.node, ["down"], check=False)


def peer_key(mesh: MeshScenario, name: str) -> str:
    return str(mesh.status(name)["self"]["wg_public_key"])


def test_a_no_op_sync_is_quiet_and_uses_the_fast_path(cron_mesh: MeshScenario) -> None:
    node = cron_mesh.members["node1"].node
    cron_mesh.meshctl("node1", "sync")
    applied = state_dir(cron_mesh.lab, node) / "applied.json"
    before = json.loads(applied.read_text())
    proc = cron_mesh.meshctl("node1", "sync")
    assert proc.stdout == "" and proc.stderr == ""
    assert json.loads(applied.read_text())["full_at"] == before["full_at"]  # no full pass ran


def test_a_manual_wg_set_is_healed_by_the_next_sync(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname, other = interface(lab, node), peer_key(cron_mesh, "node2")
    cron_mesh.meshctl("node1", "sync")
    lab.run(node, ["wg", "set", ifname, "peer", other, "persistent-keepalive", "7", "allowed-ips", "10.9.9.9/32"])
    proc = cron_mesh.meshctl("node1", "sync")
    assert other in proc.stdout, proc.stdout  # the repair is printed
    healed = wg_dump(lab, node).peers[other]
    node2 = cron_mesh.members["node2"]
    assert healed.allowed_ips == mesh_prefixes([node2.mesh_ipv4, node2.mesh_ipv6])
    assert healed.keepalive == KEEPALIVE_S
    lab.run(node, ["wg", "set", ifname, "peer", other, "remove"])
    assert other in cron_mesh.meshctl("node1", "sync").stdout
    assert other in wg_dump(lab, node).peers
    assert cron_mesh.ping("node1", node2.mesh_ipv4)


# Runs in the node's namespace: what a full pass does last, with the device moved on meanwhile.
RECORD_AFTER_A_ROAM = """
import sys, time
from pathlib import Path
from meshctl.agent import noop_pass
from meshctl.wg.userspace import UserspaceBackend

ifname, state_dir, other = sys.argv[1:4]
applied = UserspaceBackend(ifname).read()  # what the pass wrote
import subprocess
subprocess.run(["wg", "set", ifname, "peer", other, "endpoint", "192.0.2.7:9"], check=True)  # a roam
noop_pass.remember_full_pass(Path(state_dir), ifname, "inputs", applied, "userspace", int(time.time()), False)
print((Path(state_dir) / noop_pass.APPLIED_FILE).exists())
"""


def test_a_roam_between_the_write_and_the_record_is_not_recorded_as_applied(cron_mesh: MeshScenario) -> None:
    """WireGuard may roam a peer's endpoint while a pass runs; recording the roamed device as
    "applied" made every later pass a no-op that never put the endpoint back."""
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname, other = interface(lab, node), peer_key(cron_mesh, "node2")
    cron_mesh.meshctl("node1", "sync")
    wanted = wg_dump(lab, node).peers[other].endpoint
    out = lab.run(node, [sys.executable, "-c", RECORD_AFTER_A_ROAM, ifname, str(state_dir(lab, node)), other])
    assert out.stdout.strip() == "False", out.stdout + out.stderr  # no record: the next pass is a full one
    proc = cron_mesh.meshctl("node1", "sync")
    assert other in proc.stdout, proc.stdout
    assert wg_dump(lab, node).peers[other].endpoint == wanted


def test_a_dead_wireguard_go_is_restarted(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    ifname = interface(lab, node)
    cron_mesh.meshctl("node1", "sync")
    lab.run(node, ["ip", "link", "del", ifname])  # wireguard-go exits with its link
    cron_mesh.meshctl("node1", "sync")
    assert find_wireguard_go(ifname) is not None
    assert cron_mesh.ping("node1", cron_mesh.members["node2"].mesh_ipv4)


def test_an_expired_state_is_reported_on_a_no_op(cron_mesh: MeshScenario) -> None:
    lab, node = cron_mesh.lab, cron_mesh.members["node1"].node
    cron_mesh.meshctl("node1", "sync")
    trust = state_dir(lab, node) / "trust.json"
    saved = trust.read_text()
    doc = json.loads(saved)
    doc["expires"] = 1  # as if the clock had run past it: same tip, nothing to verify again
    trust.write_text(json.dumps(doc))
    try:
        proc = cron_mesh.meshctl("node1", "sync", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "state.json: expired at 1970-01-01" in proc.stderr, proc.stderr
        assert cron_mesh.ping("node1", cron_mesh.members["node2"].mesh_ipv4)  # last good config kept
    finally:
        trust.write_text(saved)
