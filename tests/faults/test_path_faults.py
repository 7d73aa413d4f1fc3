"""Faults on the paths between two devices behind NATs, in the lab (issue 9, item 3): the relay
SIGKILLed mid-flow, the NAT mapping changing (rebinding), a device roaming to another network,
25 % packet loss on the WAN.

    a -- nat-a --+                                        +-- nat-b -- b   (later: nat-c -- b)
                 +-- internet: git daemon, coturn, relay --+

Each figure (recovery time, ping rate) is printed (`pytest -s` shows it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from faults_support import need_lab

from lab import PORT_RESTRICTED, SYMMETRIC, Lab, NatRouter, Node, open_lab
from lab.core import wait_for
from lab.scenario import MeshScenario, RelayBox, build_relay_mesh
from meshctl.relay.client import RECONNECT_MAX_S
from meshctl.wg.userspace import find_wireguard_go

pytestmark = pytest.mark.netns

RELAY = "r1"
CONNECTED_WITHIN_S: Final = 20.0
# After a SIGKILL the relay clients retry with backoff capped at RECONNECT_MAX_S (4 s, with
# jitter); the flow resumes within that cap plus admission and the first relayed echo. Issue
# 5's 5 s (a relay restart) holds too in the runs measured here (4.6 s), with little margin.
RESUME_AFTER_RELAY_BACK_S: Final = RECONNECT_MAX_S + 2.0
PATH_RECOVERY_S: Final = 40.0  # measured 17 to 21 s (death of the old path ~10 s, then re-probe)
LOSS_PCT: Final = 25
LOSS_PINGS: Final = 200
# Loss on both NATs' WAN egress: a request survives nat-a with p = 0.75, its reply nat-b with
# p = 0.75: 56 % of the pings come back. Bounds: about 4 standard deviations at 200 pings.
LOSS_EXPECTED: Final = (1 - LOSS_PCT / 100) ** 2
LOSS_BOUNDS: Final = (LOSS_EXPECTED - 0.14, LOSS_EXPECTED + 0.14)
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", re.M)


def other(name: str) -> str:
    return "b" if name == "a" else "a"


@dataclass
class Pair:
    lab: Lab
    mesh: MeshScenario
    relay: RelayBox
    nats: dict[str, NatRouter]

    def node(self, name: str) -> Node:
        return self.mesh.members[name].node

    def up_both(self) -> None:
        """`meshctl up` on both devices at the same time (as two people would)."""
        self.mesh.up_together(("a", "b"))

    def peer(self, name: str) -> dict[str, Any]:
        return dict(next(p for p in self.mesh.status(name)["peers"] if p["name"] == other(name)))

    def direct_to(self, name: str) -> bool:
        """`name` sees the other device directly, at the public address of its current NAT."""
        p = self.peer(name)
        return p["path"] == "direct" and str(p["endpoint"]).split(":")[0] == str(self.nats[other(name)].public_ip)

    def relayed(self, name: str) -> bool:
        p = self.peer(name)
        return p["path"] == "relay" and p["relay"] == RELAY

    def ping(self, src: str) -> bool:
        return self.mesh.ping(src, self.mesh.members[other(src)].mesh_ipv4, 1, 1)

    def agent_pid(self, name: str) -> int:
        state = Path(self.lab.meshctl_env(self.node(name))["MESHCTL_STATE_DIR"])
        return int((state / "agent.pid").read_text())

    def wg_go(self, name: str) -> int | None:
        return find_wireguard_go(self.lab.meshctl_env(self.node(name))["MESHCTL_INTERFACE"])

    def wg_dump(self, name: str) -> str:
        iface = self.lab.meshctl_env(self.node(name))["MESHCTL_INTERFACE"]
        return self.lab.run(self.node(name), ["wg", "show", iface, "dump"], check=False).stdout

    def logs(self) -> str:
        out = []
        for name in ("a", "b"):
            path = Path(self.lab.meshctl_env(self.node(name))["MESHCTL_STATE_DIR"]) / "agent.log"
            out.append(f"--- {name} ---\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(out) + f"\n--- relay ---\n{self.relay.log()[-1000:]}"


def build(lab: Lab, profile_a: str, profile_b: str) -> Pair:
    mesh, topo, relay = build_relay_mesh(lab, profile_a, profile_b, relay_name=RELAY)
    pair = Pair(lab, mesh, relay, {"a": topo.nat_a, "b": topo.nat_b})
    pair.up_both()
    return pair


def ping_stream(lab: Lab, node: Node, ip: str, seconds: int) -> subprocess.Popen[str]:
    """ICMP echoes every 100 ms for `seconds`, each reply timestamped (ping -D), to the log."""
    return lab.popen(node, ["ping", "-D", "-n", "-i", "0.1", "-W", "1", "-w", str(seconds), ip])


def replies(text: str) -> list[tuple[float, int]]:
    return [(float(t), int(seq)) for t, seq in _REPLY.findall(text)]


def roam(lab: Lab, node: Node, router_name: str, profile: str) -> NatRouter:
    """Move `node` to a new network: a new NAT router (new public address) and a new LAN subnet;
    the old link is unplugged (its address and routes go with it)."""
    old = [link for link in node.links if link.ipv4 is not None]
    router = lab.nat_router(router_name, profile, [node])  # also the new default route
    for link in old:
        lab.run(node, ["ip", "link", "del", link.ifname])
        node.links.remove(link)
    return router


# --- the relay killed mid-flow ---------------------------------------------------------------


def test_relay_sigkilled_mid_flow_resumes_after_restart(lab: Lab) -> None:
    """symmetric <-> symmetric: every packet goes through the relay. A ping stream (10 per
    second) runs while the relay is SIGKILLed (no goodbye to its clients) and started again:
    the stream resumes within the clients' reconnect backoff cap (+2 s) of the relay being
    back; the agents and wireguard-go
    processes are the same ones, and the path is the relay again on both sides."""
    pair = build(lab, SYMMETRIC, SYMMETRIC)
    assert wait_for(lambda: pair.relayed("a") and pair.relayed("b"), CONNECTED_WITHIN_S) is not None, pair.logs()
    assert wait_for(lambda: pair.ping("a") and pair.ping("b"), CONNECTED_WITHIN_S) is not None, pair.logs()
    agents = {n: pair.agent_pid(n) for n in ("a", "b")}
    wg_go = {n: pair.wg_go(n) for n in ("a", "b")}
    stream = ping_stream(lab, pair.node("a"), pair.mesh.members["b"].mesh_ipv4, 40)
    try:
        assert wait_for(lambda: len(replies(lab.log_of(stream))) >= 10, 10) is not None, lab.log_of(stream)
        relay_proc = pair.relay.proc
        assert relay_proc is not None
        os.killpg(relay_proc.pid, signal.SIGKILL)
        relay_proc.wait(10)
        killed_at = time.time()
        pair.relay.proc = None
        time.sleep(1.0)  # the stream runs into the dead relay for a moment
        assert not [t for t, _ in replies(lab.log_of(stream)) if t > killed_at + 0.5], "replies without a relay"
        pair.relay.start()  # returns once the relay has synced the repository and listens
        back_at = time.time()
        resumed = wait_for(lambda: any(t > back_at for t, _ in replies(lab.log_of(stream))),
                           RESUME_AFTER_RELAY_BACK_S + 10)
        assert resumed is not None, (lab.log_of(stream)[-1000:], pair.logs())
        first = min(t for t, _ in replies(lab.log_of(stream)) if t > back_at)
        assert first - back_at <= RESUME_AFTER_RELAY_BACK_S, (first - back_at, pair.logs())
        # the flow goes on: most of the next two seconds' echoes come back
        time.sleep(2.0)
        after = [seq for t, seq in replies(lab.log_of(stream)) if first < t <= first + 2.0]
        assert len(after) >= 15, after
        before_kill = [t for t, _ in replies(lab.log_of(stream)) if t <= killed_at]
        gap = first - max(before_kill)
    finally:
        lab.kill(stream)
    assert {n: pair.agent_pid(n) for n in ("a", "b")} == agents
    assert {n: pair.wg_go(n) for n in ("a", "b")} == wg_go
    assert wait_for(lambda: pair.relayed("a") and pair.relayed("b"), CONNECTED_WITHIN_S) is not None
    assert pair.ping("b")
    print(f"relay SIGKILL: flow resumed {first - back_at:.1f} s after the relay was back "
          f"(gap in the stream {gap:.1f} s, relay down {back_at - killed_at:.1f} s)")


# --- one port-restricted pair: loss, rebinding, roaming ----------------------------------------


@pytest.fixture(scope="module")
def direct_pair() -> Iterator[Pair]:
    """port-restricted <-> port-restricted with a relay (for call-me-maybe): direct when up."""
    need_lab("turnserver", "conntrack")
    with open_lab("mflt") as lab:
        pair = build(lab, PORT_RESTRICTED, PORT_RESTRICTED)
        assert wait_for(lambda: pair.direct_to("a") and pair.direct_to("b"), CONNECTED_WITHIN_S) is not None, \
            pair.logs()
        # and connected: WireGuard has a session (the faults hit a flow, not a first handshake,
        # which at 25 % loss each way fails 44 % of the time and is retried only every 5 s)
        assert wait_for(lambda: pair.ping("a") and pair.ping("b"), CONNECTED_WITHIN_S) is not None, \
            (pair.wg_dump("a"), pair.wg_dump("b"), pair.logs())
        yield pair


def test_25_percent_loss_on_the_wan_still_connects(direct_pair: Pair) -> None:
    """25 % of the packets leaving each NAT's WAN side are dropped (nft numgen; sch_netem is not
    in this kernel). The pair stays connected (direct or relayed) and pings come back at the
    rate the loss allows: 0.75 x 0.75 = 56 %."""
    pair, lab = direct_pair, direct_pair.lab
    before = (time.time(), pair.wg_dump("a"), pair.wg_dump("b"))
    for nat in pair.nats.values():
        lab.netem(nat, nat.wan_if, LOSS_PCT)
    try:
        proc = lab.run(pair.node("a"), ["ping", "-n", "-q", "-i", "0.05", "-W", "1", "-c", str(LOSS_PINGS),
                                        pair.mesh.members["b"].mesh_ipv4], check=False, timeout=60)
        sent, got = (int(x) for x in re.findall(r"(\d+) packets transmitted, (\d+) received", proc.stdout)[0])
        rate = got / sent
        paths = (pair.peer("a")["path"], pair.peer("b")["path"])
    finally:
        for nat in pair.nats.values():
            lab.netem(nat, nat.wan_if, 0)
    assert sent == LOSS_PINGS
    assert LOSS_BOUNDS[0] <= rate <= LOSS_BOUNDS[1], (rate, proc.stdout, before, pair.wg_dump("a"),
                                                      pair.wg_dump("b"), pair.logs())
    assert set(paths) <= {"direct", "relay"}, paths
    assert wait_for(lambda: pair.direct_to("a") and pair.direct_to("b"), PATH_RECOVERY_S) is not None
    print(f"{LOSS_PCT} % loss each way: {got}/{sent} pings = {rate:.0%} (expected {LOSS_EXPECTED:.0%}); "
          f"paths {paths}")


def test_nat_rebinding_recovers_the_direct_path(direct_pair: Pair) -> None:
    """a's NAT gets a new public address and forgets every mapping: both sides find each other
    directly again at the new address (port-restricted on both sides: the news travels over the
    relay), and pings go through."""
    pair, lab = direct_pair, direct_pair.lab
    old_ip = str(pair.nats["a"].public_ip)
    new_ip = str(lab.rebind(pair.nats["a"]))
    assert new_ip != old_ip
    took = wait_for(lambda: pair.direct_to("a") and pair.direct_to("b"), PATH_RECOVERY_S)
    assert took is not None, (pair.peer("a"), pair.peer("b"), pair.logs())
    assert wait_for(lambda: pair.ping("a") and pair.ping("b"), 5) is not None
    print(f"NAT rebinding: direct again at {new_ip} within {took:.1f} s")


def test_roaming_to_another_network_recovers_the_direct_path(direct_pair: Pair) -> None:
    """b moves to another network: a new LAN subnet behind a new NAT router with another public
    address (its old link unplugged). The direct path comes back at b's new address."""
    pair, lab = direct_pair, direct_pair.lab
    old_ip = str(pair.nats["b"].public_ip)
    pair.nats["b"] = roam(lab, pair.node("b"), "nat-c", PORT_RESTRICTED)
    new_ip = str(pair.nats["b"].public_ip)
    assert new_ip != old_ip
    took = wait_for(lambda: pair.direct_to("a") and pair.direct_to("b"), PATH_RECOVERY_S)
    assert took is not None, (pair.peer("a"), pair.peer("b"), pair.logs())
    assert wait_for(lambda: pair.ping("a") and pair.ping("b"), 5) is not None
    me = pair.mesh.status("b")["self"]
    assert any(e.startswith(new_ip + ":") for e in me["endpoints"]), me
    print(f"roaming: b direct again from {new_ip} within {took:.1f} s")
