"""NAT traversal end to end: two devices, each behind its own NAT, agents up, real WireGuard.

    a -- nat-a (profile_a) --+                              +-- nat-b (profile_b) -- b
                             +-- internet: git daemon, coturn --+

Both devices join with their NAT's public address as static endpoint and the mesh's
STUN servers are the lab's coturn. "direct" is checked three ways: `meshctl status
--json` says path "direct" with the other NAT's public address as endpoint, on both
sides, and a ping over the mesh goes through.
"""

from __future__ import annotations

import pytest
from natpaths_support import build

from lab import (
    ADDRESS_RESTRICTED,
    FULL_CONE,
    MASQUERADE,
    PORT_RESTRICTED,
    SYMMETRIC,
    Lab,
)
from lab.core import wait_for
from meshctl.nat import paths

pytestmark = pytest.mark.netns

DIRECT_WITHIN_S = 15.0  # agents are up; the path usually exists before `up` returns
# Two bare masquerades on one segment: the first packet across always poisons the other
# NAT (even a TTL-2 punch reaches it), so the path comes from the recovery rounds
# (paths.py): both quiet for a NAT timeout, then one round each. They need at most
# NO_DIRECT_AFTER_S + QUIET_BEFORE_ROUNDS_S + 2 rounds (about 113 s); the bound adds two
# rounds: this case guards against a path stuck for good (as it was while an expired flow's
# random port was lent to the next flow, and while a static endpoint was used after 150 s).
POISONED_DIRECT_WITHIN_S = (paths.NO_DIRECT_AFTER_S + paths.QUIET_BEFORE_ROUNDS_S
                            + 4 * paths.RECOVERY_ROUND_S)
NO_DIRECT_REPORTED_S = 10.0
REBIND_RECOVERY_S = 10.0


@pytest.mark.parametrize(("profile_a", "profile_b", "within_s"), [
    (PORT_RESTRICTED, PORT_RESTRICTED, DIRECT_WITHIN_S),
    (FULL_CONE, SYMMETRIC, DIRECT_WITHIN_S),
    (ADDRESS_RESTRICTED, SYMMETRIC, DIRECT_WITHIN_S),
    # conntrack poisoning regression: must not get stuck
    (MASQUERADE, MASQUERADE, POISONED_DIRECT_WITHIN_S),
])
def test_direct_path_through_two_nats(lab: Lab, profile_a: str, profile_b: str, within_s: float) -> None:
    nm = build(lab, profile_a, profile_b)
    nm.up_both()
    assert wait_for(lambda: nm.is_direct("a") and nm.is_direct("b"), within_s) is not None, \
        (nm.peer_status("a"), nm.peer_status("b"), nm.agent_log("a")[-2000:])
    assert wait_for(lambda: nm.ping("a") and nm.ping("b"), DIRECT_WITHIN_S) is not None
    # `meshctl ping` names the path like `tailscale ping`
    out = nm.mesh.meshctl("a", "ping", "b").stdout.strip()
    b_ip = nm.mesh.members["b"].mesh_ipv4
    assert out.startswith(f"pong from b ({b_ip}) via direct {nm.public_ip('b')}:"), out
    assert out.endswith("ms"), out
    # the own endpoints and the NAT summary are in the status document
    me = nm.mesh.status("a")["self"]
    assert me["nat"]["udp"] is True
    assert me["nat"]["mapping_varies_by_dest"] is (profile_a == SYMMETRIC)
    assert any(e.startswith(nm.public_ip("a") + ":") for e in me["endpoints"]), me


@pytest.mark.parametrize(("profile_a", "profile_b"), [
    (PORT_RESTRICTED, SYMMETRIC),
    (SYMMETRIC, SYMMETRIC),
])
def test_no_direct_path_is_reported(lab: Lab, profile_a: str, profile_b: str) -> None:
    nm = build(lab, profile_a, profile_b)
    nm.up_both()
    took = wait_for(lambda: "b: no direct path" in nm.agent_log("a"), NO_DIRECT_REPORTED_S)
    assert took is not None, nm.agent_log("a")[-2000:]
    assert nm.peer_status("a")["path"] == "none"
    assert nm.peer_status("b")["path"] == "none"
    proc = nm.mesh.meshctl("a", "ping", "b", check=False)
    assert proc.returncode == 1
    assert "no path to b" in proc.stderr, proc.stderr
    assert not nm.ping("a")


def test_rebinding_and_loss_keep_the_path_direct(lab: Lab) -> None:
    """a's home router gets a new public address; b sits behind a full cone NAT.

    Without a relay only a cone on the far side lets the rebound side come back: a's new
    mapping reaches b unasked, b answers it.
    """
    nm = build(lab, PORT_RESTRICTED, FULL_CONE)
    nm.up_both()
    assert wait_for(lambda: nm.is_direct("a") and nm.is_direct("b"), DIRECT_WITHIN_S) is not None
    # a WireGuard session first: the rebinding must carry a flow over, not race a first handshake
    assert wait_for(lambda: nm.ping("a") and nm.ping("b"), DIRECT_WITHIN_S) is not None
    old_ip = nm.public_ip("a")
    new_ip = str(lab.rebind(nm.topo.nat_a))
    assert new_ip != old_ip

    def recovered() -> bool:
        p = nm.peer_status("b")
        return p["path"] == "direct" and str(p["endpoint"]).startswith(new_ip + ":")

    took = wait_for(recovered, REBIND_RECOVERY_S)
    assert took is not None, (nm.peer_status("b"), nm.agent_log("b")[-2000:])
    assert wait_for(lambda: nm.ping("b") and nm.ping("a"), 5.0) is not None

    # 10 % loss each way on a's WAN: heartbeats get lost, the path must stay direct
    lab.netem(nm.topo.nat_a, nm.topo.nat_a.wan_if, 10)
    lab.netem(nm.topo.internet, nm.topo.internet.link("wan").ifname, 10)
    seen = []
    for _ in range(15):
        seen.append((nm.peer_status("a")["path"], nm.peer_status("b")["path"]))
        wait_for(lambda: False, 1.0)
    assert all(s == ("direct", "direct") for s in seen), seen
    assert nm.is_direct("a") and nm.is_direct("b")
    assert wait_for(lambda: nm.ping("a"), 5.0) is not None
