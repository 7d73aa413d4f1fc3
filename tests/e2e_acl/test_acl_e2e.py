"""End-to-end: issue 6's zero-trust scenario through the real repository, agents and nftables.

The policy is signed into the coordination repository by the admin and reaches the nodes
through git; each node's agent (or `meshctl sync`) compiles it into table netdev meshctl.
Tests run in file order on one mesh: V1 (dev -> prod:443, ops -> prod:*), then V2 (dev
also gets :22) with a connection kept open across the change, then V3 (ops loses :22).
"""

from __future__ import annotations

import subprocess
import time
from typing import Final

import pytest
from acl_e2e_support import (
    POLICY_BROKEN,
    POLICY_V2,
    POLICY_V3,
    EchoService,
    connect,
    exchange,
    syn_count,
)

from lab import meshctl_argv
from lab.scenario import MeshScenario
from meshctl.coord import admin
from meshctl.keys import load_signing_key

pytestmark = pytest.mark.netns

DENIED_PING_COUNT: Final = 2
EXIT_DENIED: Final = 4  # `meshctl acl check`: allowed 0, denied 4 (1-3 are failures)
EXIT_REFUSED: Final = 3  # `meshctl repo verify`: the change is refused


def ns_of(mesh: MeshScenario, name: str) -> str:
    return mesh.members[name].node.ns


def prod_ips(mesh: MeshScenario) -> tuple[str, str]:
    member = mesh.members["prod"]
    return member.mesh_ipv4, member.mesh_ipv6


def reaches(mesh: MeshScenario, src: str, ip: str, port: int) -> bool:
    """A new TCP connection from `src` to ip:port is accepted and carries data both ways."""
    sock = connect(ns_of(mesh, src), ip, port)
    if sock is None:
        return False
    try:
        payload = f"{src}->{ip}:{port}".encode()
        assert exchange(sock, payload) == payload
    finally:
        sock.close()
    return True


def acl_check(mesh: MeshScenario, on: str, src: str, dst: str) -> tuple[bool, str]:
    """`meshctl acl check SRC DST` on node `on`, against the state it last synced."""
    proc = mesh.meshctl(on, "acl", "check", src, dst, check=False)
    assert proc.returncode in (0, EXIT_DENIED), proc.stderr
    return proc.returncode == 0, proc.stdout.strip()


def sync_all(mesh: MeshScenario) -> None:
    for name in mesh.members:
        mesh.meshctl(name, "sync")


def admin_unchecked(mesh: MeshScenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*meshctl_argv(), *args], cwd=mesh.checkout, env=mesh.admin_env,
                          capture_output=True, text=True, timeout=120, check=False)


# --- policy V1 ---------------------------------------------------------------------------------


def test_dev_reaches_prod_443_not_22(acl_mesh: MeshScenario, prod_service: EchoService) -> None:
    for ip in prod_ips(acl_mesh):
        assert reaches(acl_mesh, "dev", ip, 443), f"dev -> {ip}:443 should be accepted"
        assert not reaches(acl_mesh, "dev", ip, 22), f"dev -> {ip}:22 should be dropped"
    assert prod_service.accepted(443) == 2


def test_denied_syn_reaches_prod_but_never_the_service(acl_mesh: MeshScenario,
                                                       prod_service: EchoService) -> None:
    """The SYNs came out of the tunnel on prod (counted before the filter), and were dropped."""
    prod_ns = ns_of(acl_mesh, "prod")
    before = syn_count(prod_ns, 22)
    assert connect(ns_of(acl_mesh, "dev"), prod_ips(acl_mesh)[0], 22) is None
    assert syn_count(prod_ns, 22) > before  # the client retransmits the SYN; each one arrived
    assert prod_service.accepted(22) == 0


def test_ops_reaches_prod_22_and_443(acl_mesh: MeshScenario, prod_service: EchoService) -> None:
    before = prod_service.accepted(22)
    for ip in prod_ips(acl_mesh):
        for port in (22, 443):
            assert reaches(acl_mesh, "ops", ip, port), f"ops -> {ip}:{port} should be accepted"
    assert prod_service.accepted(22) == before + 2


def test_laptops_accept_nothing(acl_mesh: MeshScenario, prod_service: EchoService) -> None:
    """No rule names dev or ops as a destination: default deny, also for prod and each other."""
    dev = acl_mesh.members["dev"].mesh_ipv4
    ops = acl_mesh.members["ops"].mesh_ipv4
    # No service listens on the laptops: an accepted SYN would come back as a refusal (raises).
    assert not reaches(acl_mesh, "prod", dev, 22)
    assert not reaches(acl_mesh, "ops", dev, 443)
    assert not reaches(acl_mesh, "dev", ops, 22)


def test_ping_only_where_the_policy_allows(acl_mesh: MeshScenario) -> None:
    """Echo passes to a node exactly where some port of it is allowed from the source."""
    m = acl_mesh.members
    for family in ("mesh_ipv4", "mesh_ipv6"):
        prod, dev, ops = (getattr(m[n], family) for n in ("prod", "dev", "ops"))
        assert acl_mesh.ping("dev", prod), f"dev -> prod {prod}"
        assert acl_mesh.ping("ops", prod), f"ops -> prod {prod}"
        assert not acl_mesh.ping("dev", ops, count=DENIED_PING_COUNT, timeout_s=1), f"dev -> ops {ops}"
        assert not acl_mesh.ping("prod", dev, count=DENIED_PING_COUNT, timeout_s=1), f"prod -> dev {dev}"


def test_acl_check_on_a_node_agrees(acl_mesh: MeshScenario) -> None:
    cases = {
        ("dev", "prod:443"): True,
        ("dev", "prod:22"): False,
        ("ops", "prod:22"): True,
        ("ops", "prod:443"): True,
        ("prod", "dev:22"): False,
    }
    for (src, dst), want in cases.items():
        allowed, text = acl_check(acl_mesh, "dev", src, dst)
        assert allowed is want, f"acl check {src} {dst}: {text}"
        assert text.startswith("allow: " if want else "deny: "), text
    _, text = acl_check(acl_mesh, "dev", "dev", "prod:443")
    assert "acls[0]" in text, f"the deciding rule is not named: {text}"


# --- policy V2: dev gets :22 -------------------------------------------------------------------


def test_policy_change_opens_22_and_keeps_open_443(acl_mesh: MeshScenario, prod_service: EchoService) -> None:
    prod4 = prod_ips(acl_mesh)[0]
    conn = connect(ns_of(acl_mesh, "dev"), prod4, 443)
    assert conn is not None
    try:
        assert exchange(conn, b"before the change") == b"before the change"
        accepted_443 = prod_service.accepted(443)

        acl_mesh.set_policy(POLICY_V2)
        acl_mesh.admin("repo", "verify", ".")  # the good edit passes the pull-request check
        sync_all(acl_mesh)

        assert acl_check(acl_mesh, "dev", "dev", "prod:22")[0] is True
        for ip in prod_ips(acl_mesh):
            assert reaches(acl_mesh, "dev", ip, 22), f"dev -> {ip}:22 after the change"
        assert exchange(conn, b"after the change") == b"after the change"
        assert prod_service.accepted(443) == accepted_443, "the open :443 connection was replaced"
    finally:
        conn.close()


def test_repo_verify_rejects_an_edit_that_breaks_a_policy_test(acl_mesh: MeshScenario) -> None:
    """An edit that removes the operators' rule: `admin sign` refuses to sign it (nothing written,
    nothing committed), and a pull request carrying such a state, signed some other way, fails
    `meshctl repo verify`."""
    acl_mesh.git("checkout", "-q", "-b", "drop-ops")
    try:
        (acl_mesh.checkout / "policy.hujson").write_text(POLICY_BROKEN)
        head = acl_mesh.git("rev-parse", "HEAD")
        proc = admin_unchecked(acl_mesh, "admin", "sign")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert any("oscar@example.com -> tag:prod:22" in line and "should be accepted" in line
                   for line in proc.stderr.splitlines()), proc.stderr
        assert acl_mesh.git("rev-parse", "HEAD") == head  # nothing committed
        assert "state.json" not in acl_mesh.git("status", "--porcelain")  # nothing written
        # The same edit signed with the library (as a careless tool would), committed as a pull request:
        co = admin.open_checkout(acl_mesh.checkout)
        key = load_signing_key(acl_mesh.admin_dir / "admin.key")
        admin.write_state(co, co.state, [key], int(time.time()))
        acl_mesh.git("commit", "-qam", "drop ops")
        proc = admin_unchecked(acl_mesh, "repo", "verify", ".", "--base", "main")
        assert proc.returncode == EXIT_REFUSED, proc.stdout + proc.stderr
        problems = proc.stderr.strip().splitlines()
        assert problems and all("tests[1]" in p and "should be accepted" in p for p in problems), problems
        assert any("oscar@example.com -> tag:prod:22" in p for p in problems), problems
    finally:
        acl_mesh.git("checkout", "-q", "-f", "main")
        acl_mesh.git("branch", "-q", "-D", "drop-ops")


# --- policy V3: ops loses :22 ------------------------------------------------------------------


def test_policy_change_stops_accepting_what_it_forbids(acl_mesh: MeshScenario,
                                                       prod_service: EchoService) -> None:
    prod4 = prod_ips(acl_mesh)[0]
    assert reaches(acl_mesh, "ops", prod4, 22)
    acl_mesh.set_policy(POLICY_V3)
    acl_mesh.meshctl("prod", "sync")  # only the receiving node enforces
    before = prod_service.accepted(22)
    assert not reaches(acl_mesh, "ops", prod4, 22)
    assert reaches(acl_mesh, "ops", prod4, 443)
    assert reaches(acl_mesh, "dev", prod4, 22)
    assert prod_service.accepted(22) == before + 1  # only dev's
