"""The kernel enforces what `meshctl acl check` and the policy's tests answer (one evaluator).

A kiosk with no owner behind the real nft filter compiled for it; every client address and
port is tried with a real TCP connection and compared with `evaluate` (the code `acl check` and
`repo verify`'s tests run). Issue 16 (4): the camera, also owner-less, must reach nothing.
"""

from __future__ import annotations

import pytest
from firewall_lab import NsPair
from policy_samples import make_netmap, make_peer

from meshctl.firewall.apply import apply_filter
from meshctl.policy.check import check_policy
from meshctl.policy.compile import compile_filter
from meshctl.policy.evaluate import evaluate
from meshctl.policy.parse import parse_policy

pytestmark = pytest.mark.netns

POLICY = """{
  "tagOwners": {"tag:srv": []},
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
  "grants": [
    {"src": ["tag:srv"], "dst": ["autogroup:member"], "ip": ["tcp:443"]},
    {"src": ["alice@example.com"], "dst": ["100.64.0.1"], "ip": ["tcp:8080"]},
  ],
  "tests": [{"src": "100.64.0.9", "deny": ["100.64.0.1:22", "100.64.0.1:443", "100.64.0.1:8080"]}],
}"""
CLIENTS = {"100.64.0.2": "laptop", "100.64.0.3": "phone", "100.64.0.4": "srv", "100.64.0.9": "camera"}
PORTS = (22, 443, 8080)


def test_nft_and_acl_check_give_one_answer(nspair: NsPair) -> None:
    netmap = make_netmap([
        make_peer("kiosk", 1),
        make_peer("laptop", 2, (), "alice@example.com"),
        make_peer("phone", 3, (), "alice@example.com"),
        make_peer("srv", 4, ("tag:srv",)),
        make_peer("camera", 9),
    ], POLICY)
    policy = parse_policy(POLICY)
    assert check_policy(POLICY, netmap) == []
    listeners = [nspair.listen(port) for port in PORTS]
    apply_filter(compile_filter(policy, netmap, "kiosk"), nspair.mesh_if, nspair.server)
    answers = {}
    for addr, name in CLIENTS.items():
        for port in PORTS:
            want = evaluate(policy, netmap, name, "kiosk", port).allowed
            conn = nspair.connect(addr, port)
            got = conn is not None
            if conn is not None:
                conn.close()
            assert got is want, f"{name} -> kiosk:{port}: nft {'accepts' if got else 'drops'}, acl check says {want}"
            answers[(name, port)] = got
    assert [p for p in PORTS if answers[("laptop", p)]] == [8080]
    assert [p for p in PORTS if answers[("srv", p)]] == [443]
    assert not any(answers[("camera", p)] for p in PORTS)
    for listener in listeners:
        listener.close()
