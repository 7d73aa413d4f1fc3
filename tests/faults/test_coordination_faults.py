"""Faults around the coordination plane, in the lab: the git host down, the disk full during a
sync, the clock jumping (issue 9, item 3).

    node1 --+-- LAN --+-- node2 (state directory on a 16 MB tmpfs)
            git (git daemon)

One mesh for the module: both nodes run `meshctl up --sync-interval 2`, so an outage spans
several of the agents' own sync attempts within seconds. The tests run in file order; each
leaves the mesh healthy for the next.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from faults_support import AgentLog, faked_clock, fill_disk, need_lab, tmpfs

from lab import Lab, Node, one_lan, open_lab
from lab.core import wait_for
from lab.scenario import MeshScenario
from meshctl.coord.node_state import NodeState

pytestmark = pytest.mark.netns

SYNC_INTERVAL_S: Final = 2
STATE_FILES: Final = ("node.json", "trust.json", "netmap.json", "records-cache.json")
OUTAGE_ATTEMPTS: Final = 3  # agent sync attempts that must fail while the git host is down
RECOVERY_WITHIN_S: Final = 15.0  # a sync attempt every 2 s once the host is back
AN_HOUR_S: Final = 3600


@dataclass
class CoordMesh:
    lab: Lab
    mesh: MeshScenario

    def node(self, name: str) -> Node:
        return self.mesh.members[name].node

    def state_dir(self, name: str) -> Path:
        return Path(self.lab.meshctl_env(self.node(name))["MESHCTL_STATE_DIR"])

    def meshctl(self, name: str, *args: str, env: dict[str, str] | None = None) -> Any:
        return self.lab.meshctl(self.node(name), list(args), env=env, check=False)

    def status(self, name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = self.meshctl(name, "status", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def up(self, name: str) -> None:
        proc = self.meshctl(name, "up", "--sync-interval", str(SYNC_INTERVAL_S))
        assert proc.returncode == 0, (proc.stderr, self.log(name).text()[-3000:])

    def log(self, name: str) -> AgentLog:
        log = AgentLog(self.state_dir(name) / "agent.log")
        log.offset = 0
        return log

    def since_now(self, name: str) -> AgentLog:
        return AgentLog(self.state_dir(name) / "agent.log")

    def pings(self, src: str, dst: str) -> bool:
        ip = self.mesh.members[dst].mesh_ipv4
        return any(self.mesh.ping(src, ip, 2, 1) for _ in range(3))

    def agent_pid(self, name: str) -> int | None:
        try:
            pid = int((self.state_dir(name) / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def wg_peers(self, name: str) -> str:
        ifname = self.lab.meshctl_env(self.node(name))["MESHCTL_INTERFACE"]
        return str(self.lab.run(self.node(name), ["wg", "show", ifname, "allowed-ips"]).stdout)

    def push_renewal(self) -> int:
        """An admin change landing on the repository (renew: a new serial); returns the serial."""
        self.mesh.admin("admin", "renew")
        self.mesh.git("push", "-q", str(self.mesh.repo_dir), "main")
        return int(json.loads((self.mesh.checkout / "state.json").read_text())["serial"])


def kill_and_wait(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10) is not None, f"pid {pid} survived {sig.name}"


def one_line(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("hint: ")]


@pytest.fixture(scope="module")
def cm() -> Iterator[CoordMesh]:
    need_lab("git")
    with open_lab("mflt") as lab:
        topo = one_lan(lab, 2)
        n1, n2 = topo.hosts
        with tmpfs(Path(lab.meshctl_env(n2)["MESHCTL_STATE_DIR"]), "16m"):
            mesh = MeshScenario(lab, topo.git_url, topo.repo_dir, "faults")
            cm = CoordMesh(lab, mesh)
            try:
                mesh.init()
                for host, name in ((n1, "node1"), (n2, "node2")):
                    mesh.join(host, name, endpoint=f"{host.ipv4}:51820")
                for name in ("node1", "node2"):
                    mesh.approve(name)
                for name in ("node1", "node2"):
                    cm.up(name)
                assert wait_for(lambda: cm.pings("node1", "node2"), 15) is not None
                yield cm
            finally:
                # agents and wireguard-go first (the tmpfs is then free to go)
                downs = [lab.meshctl_popen(cm.node(n), ["down"]) for n in ("node1", "node2")]
                for proc in downs:
                    proc.wait(60)


def test_git_host_down_keeps_tunnels_shows_staleness_and_recovers(cm: CoordMesh) -> None:
    """The git host is down across several of node1's agent sync attempts (every 2 s).

    Simulated: an hour of outage. The outage really lasts seconds; then node1's memory of
    its last good fetch (trust.json's fetched_at) is moved an hour back, as an hour without a
    successful fetch would leave it, so `status` shows the age as it would after an hour.
    An admin change merged during the outage is applied once the host is back.
    """
    lab, mesh = cm.lab, cm.mesh
    before = cm.status("node1")["coordination"]
    assert before["stale"] is False
    peers = cm.wg_peers("node1")
    log = cm.since_now("node1")
    with lab.git_daemon_stopped(mesh.git_url):
        down_at = time.monotonic()
        renewed = cm.push_renewal()  # merged while the nodes cannot fetch
        assert renewed > before["serial"]
        took = wait_for(lambda: log.text().count("repository unreachable") >= OUTAGE_ATTEMPTS,
                        OUTAGE_ATTEMPTS * SYNC_INTERVAL_S + 10)
        assert took is not None, log.text()[-2000:]
        # the tunnels keep working, both ways, with the last good configuration
        assert cm.pings("node1", "node2") and cm.pings("node2", "node1")
        assert cm.wg_peers("node1") == peers
        coordination = cm.status("node1")["coordination"]
        assert coordination["stale"] is True, coordination
        assert "repository unreachable" in coordination["error"] and mesh.git_url in coordination["error"]
        assert coordination["serial"] == before["serial"]
        # an hour without a good fetch: the age status reports comes from trust.json
        node = NodeState(cm.state_dir("node1"))
        memory = node.load_memory()
        assert memory is not None
        an_hour_ago = int(time.time()) - AN_HOUR_S
        node.save_memory(memory, an_hour_ago)
        assert wait_for(lambda: "repository unreachable" in log.text()[-500:], 10) is not None
        doc = cm.status("node1")["coordination"]
        assert doc["fetched_at"] == an_hour_ago and doc["stale"] is True
        human = cm.meshctl("node1", "status").stdout
        assert "fetched 60m ago  STALE" in human and "repository unreachable" in human, human
        assert cm.pings("node1", "node2")
        outage_s = time.monotonic() - down_at

    def fresh() -> bool:
        doc = cm.status("node1")["coordination"]
        return doc["stale"] is False and doc["serial"] == renewed and doc["fetched_at"] > an_hour_ago

    recovered = wait_for(fresh, RECOVERY_WITHIN_S)
    assert recovered is not None, (cm.status("node1")["coordination"], log.text()[-2000:])
    assert cm.status("node1")["coordination"]["error"] is None
    assert cm.pings("node1", "node2")
    print(f"git host down {outage_s:.1f} s ({log.text().count('repository unreachable')} failed "
          f"attempts); fresh again {recovered:.1f} s after it returned")


def test_disk_full_during_a_sync_keeps_the_accepted_state(cm: CoordMesh) -> None:
    """node2's state directory is a 16 MB tmpfs; it is filled up, then a new state is pushed and
    `meshctl sync` run: it fails with one clear line and a non-zero exit, node memory and netmap
    cache are byte for byte what they were, the tunnel stays; with space again the next sync
    accepts the new state."""
    state = cm.state_dir("node2")
    assert wait_for(lambda: cm.status("node2")["coordination"]["stale"] is False, RECOVERY_WITHIN_S)
    serial = cm.status("node2")["coordination"]["serial"]
    pid = cm.agent_pid("node2")
    assert pid is not None
    renewed = cm.push_renewal()
    peers = cm.wg_peers("node2")
    filler = None
    try:
        # the agent must not accept the new state between the snapshot and the fill
        saved = {name: (state / name).read_bytes() for name in STATE_FILES}
        filler = fill_disk(state)
        saved = {name: (state / name).read_bytes() for name in STATE_FILES}
        if json.loads(saved["trust.json"])["serial"] != serial:
            pytest.fail("the agent accepted the new state before the disk was full")
        proc = cm.meshctl("node2", "sync")
        assert proc.returncode != 0, proc
        lines = one_line(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("meshctl: "), proc.stderr
        assert "no space left" in lines[0].lower(), proc.stderr
        print(f"disk full: {lines[0]}")
        assert "Traceback" not in proc.stderr
        assert {name: (state / name).read_bytes() for name in STATE_FILES} == saved
        assert cm.agent_pid("node2") == pid, "the agent died on the full disk"
        assert cm.pings("node2", "node1")
        assert cm.wg_peers("node2") == peers
        assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    finally:
        if filler is not None:
            filler.unlink()
    proc = cm.meshctl("node2", "sync")
    assert proc.returncode == 0, proc.stderr
    doc = cm.status("node2")["coordination"]
    assert doc["serial"] == renewed and doc["stale"] is False, doc
    assert cm.agent_pid("node2") == pid
    assert cm.pings("node2", "node1")


def test_clock_jumps_forward_past_expiry_then_back(cm: CoordMesh) -> None:
    """node2 is synced from cron (its agent stopped; SIGTERM leaves the interface up). Its clock
    jumps an hour past the accepted state's expiry: `meshctl sync` refuses (exit 3, one line,
    the clock hint), writes no future fetch time and keeps the last good configuration. Then
    the clock jumps back two days before the real time: the sync works and warns that the
    clock went back. The tunnel never goes down.

    What is faked: the wall clock of those `meshctl` commands only (faults_support.faked_clock:
    libfaketime by LD_PRELOAD, Debian's faketime); never the machine's. Monotonic clocks move
    with it (constant within each command).
    """
    doc = cm.status("node2")["coordination"]
    assert doc["stale"] is False
    peers = cm.wg_peers("node2")
    pid = cm.agent_pid("node2")
    assert pid is not None
    kill_and_wait(pid, signal.SIGTERM)
    try:
        trust = (cm.state_dir("node2") / "trust.json").read_bytes()
        ahead = faked_clock(f"+{doc['expires'] - int(time.time()) + AN_HOUR_S}")
        proc = cm.meshctl("node2", "sync", env=ahead)
        assert proc.returncode == 3, (proc.returncode, proc.stderr)
        lines = one_line(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("meshctl: state.json: expired at "), proc.stderr
        assert "hint: the accepted state expired at " in proc.stderr and "system clock" in proc.stderr
        coordination = cm.status("node2", env=ahead)["coordination"]
        assert coordination["stale"] is True and "expired" in coordination["error"], coordination
        assert coordination["serial"] == doc["serial"]
        assert (cm.state_dir("node2") / "trust.json").read_bytes() == trust  # no fetch time from the future
        assert cm.wg_peers("node2") == peers  # the last good configuration is kept
        assert cm.pings("node2", "node1") and cm.pings("node1", "node2")

        behind = faked_clock("-2d")
        proc = cm.meshctl("node2", "sync", env=behind)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith("warning: the system clock reads "), proc.stderr
        assert "already fetched the repository at" in proc.stderr, proc.stderr
        assert cm.status("node2", env=behind)["coordination"]["serial"] == doc["serial"]
        assert cm.wg_peers("node2") == peers
        assert cm.pings("node2", "node1")
    finally:
        cm.up("node2")  # the agent again, on the real clock
    assert wait_for(lambda: cm.status("node2")["coordination"]["stale"] is False, RECOVERY_WITHIN_S)
    assert cm.wg_peers("node2") == peers
    assert cm.pings("node2", "node1")
    # Through the agent too: `sync` hands its pass over and still says the clock looks wrong.
    proc = cm.meshctl("node2", "sync", env=faked_clock("-2d"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning: the system clock reads "), proc.stderr
