"""The tunnel holds under floods on WireGuard's port (issue 23): no CPU timing here; the figures
are bench/wgport_flood.py's. Each kind for a few seconds at 20,000 packets/s from the LAN's git
host (no member) at node1's WireGuard port, while node2 pings node1 across the tunnel."""

from __future__ import annotations

import pytest
from attack_support import AttackMesh

from meshctl.nat import admission

pytestmark = pytest.mark.netns

RATE = 20_000
SECONDS = 3.0


@pytest.mark.parametrize("kind", ["member-key", "member-key-spoofed", "unknown-key", "stun"])
def test_the_tunnel_holds_under_a_flood(attack_mesh: AttackMesh, kind: str) -> None:
    am = attack_mesh
    before = am.admission("node1")
    flood = am.flood("node1", kind, RATE, SECONDS)
    sent, answered = am.pings("node2", "node1", int(SECONDS * 10))
    assert flood.wait(30) == 0
    assert flood.stdout is not None and int(flood.stdout.read().strip()) >= RATE * SECONDS * 0.8
    assert answered >= sent - 1, f"{sent - answered} of {sent} pings lost under a {kind} flood"
    assert am.direct("node1", "node2") and am.direct("node2", "node1")
    after = am.admission("node1")
    refused = (after["refused_source"] + after["refused_stranger"]
               - before["refused_source"] - before["refused_stranger"])
    if kind.startswith("member-key"):
        # a member's key passes the kernel's filter: the agent refuses by source, unread
        assert refused >= RATE * SECONDS / 2, after
        # forged sources, ever new, share the strangers' bucket; one source gets its own
        most = admission.STRANGER_BURST + admission.STRANGER_RATE * (SECONDS + 2)
        assert after["admitted"] - before["admitted"] <= most, "the flood reached the cryptography"
    else:
        # unknown keys and STUN from no server asked never reach the agent: the kernel drops them
        assert refused == 0 and after["admitted"] - before["admitted"] <= 50, after
