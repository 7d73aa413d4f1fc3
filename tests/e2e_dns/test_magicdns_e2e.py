"""End-to-end: real `dig` against the agent's MagicDNS in the lab (issue 7).

One mesh per module (see conftest.py). Tests run in file order; the rename and
`meshctl down` change the mesh for good and come last.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from typing import Final

import pytest
from dns_e2e_support import DnsMesh

from lab.scenario import MeshScenario
from meshctl.dns.resolvconf import MARKER
from meshctl.dns.zone import MAGIC_ADDRESS

pytestmark = pytest.mark.netns

DIG_OPTS: Final = ("+time=2", "+tries=2")
UPSTREAM_NAME: Final = "www.upstream.test"
UPSTREAM_ANSWER: Final = "192.0.2.80"  # what upstream_dns.py answers
ZONE_UPDATE_S: Final = 10.0  # the agent applies a new zone right after its pass


def dig(mesh: MeshScenario, on: str, *args: str) -> str:
    """Full `dig` output on member `on`'s node (dig exits 0 also for NXDOMAIN)."""
    proc = mesh.lab.run(mesh.members[on].node, ["dig", *DIG_OPTS, *args], check=False)
    assert proc.returncode == 0, f"dig {' '.join(args)} on {on}: {proc.stdout.strip()} {proc.stderr.strip()}"
    return proc.stdout


def short(mesh: MeshScenario, on: str, *args: str) -> list[str]:
    return dig(mesh, on, "+short", *args).split()


def status(output: str) -> str:
    m = re.search(r"status: ([A-Z]+)", output)
    assert m, output
    return m.group(1)


def answers(mesh: MeshScenario, on: str, *args: str, want: list[str]) -> bool:
    return short(mesh, on, *args) == want


def wait_until(check: object, what: str, timeout_s: float = ZONE_UPDATE_S) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.2)


def agent_sync(mesh: MeshScenario, name: str) -> None:
    """A sync pass inside the running agent (`meshctl up` with an agent up asks it for one)."""
    out = mesh.up(name)
    assert "already running" in out, out


# --- names -------------------------------------------------------------------------------------


def test_name_at_the_magic_address(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    for name in ("node1", "node2", "node3"):
        assert short(mesh, "node1", f"@{MAGIC_ADDRESS}", f"{name}.{domain}") == [mesh.members[name].mesh_ipv4]
    out = dig(mesh, "node1", f"@{MAGIC_ADDRESS}", f"NODE2.{domain.upper()}")
    assert status(out) == "NOERROR" and " aa" in out.split("flags:")[1].split(";")[0], out


def test_name_through_the_namespace_resolv_conf(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    text = dns_mesh.resolv_conf.read_text()
    assert text.startswith(MARKER) and f"nameserver {MAGIC_ADDRESS}" in text, text
    lines = text.splitlines()  # the mesh domain searched first; the rest of the set-up carried over
    assert f"search {domain} corp.example" in lines and "options edns0 timeout:2" in lines, text
    node2 = mesh.members["node2"].mesh_ipv4
    assert short(mesh, "node1", f"node2.{domain}") == [node2]
    assert short(mesh, "node1", "+search", "node2") == [node2]  # `search <domain>` in resolv.conf
    # The C library's resolver (what ssh would use) sees the names too.
    getent = mesh.lab.run(mesh.members["node1"].node, ["getent", "ahostsv4", f"node3.{domain}"]).stdout
    assert getent.split()[0] == mesh.members["node3"].mesh_ipv4, getent


def test_aaaa(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    assert short(mesh, "node1", "AAAA", f"node2.{domain}") == [mesh.members["node2"].mesh_ipv6]


def test_ptr(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    node2 = mesh.members["node2"]
    for ip in (node2.mesh_ipv4, node2.mesh_ipv6):
        assert short(mesh, "node1", "-x", ip) == [f"node2.{domain}."], ip


def test_nxdomain_inside_the_mesh_domain(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    for server in (f"@{MAGIC_ADDRESS}", "+search"):
        out = dig(mesh, "node1", server, f"nosuch.{domain}")
        assert status(out) == "NXDOMAIN", out
        assert f"{domain}." in out.split("AUTHORITY SECTION:")[1], "no SOA for negative caching"


def test_forwarded_name_answered_by_the_previous_upstream(dns_mesh: DnsMesh) -> None:
    mesh = dns_mesh.mesh
    assert f"# meshctl-upstream {dns_mesh.upstream}" in dns_mesh.resolv_conf.read_text()
    assert short(mesh, "node1", UPSTREAM_NAME) == [UPSTREAM_ANSWER]
    assert short(mesh, "node1", f"@{MAGIC_ADDRESS}", UPSTREAM_NAME) == [UPSTREAM_ANSWER]
    assert status(dig(mesh, "node1", "nosuch.upstream.test")) == "NXDOMAIN"  # the upstream's answer


def test_tcp(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    out = dig(mesh, "node1", "+tcp", f"@{MAGIC_ADDRESS}", f"node2.{domain}")
    assert "(TCP)" in out and status(out) == "NOERROR", out
    assert short(mesh, "node1", "+tcp", f"@{MAGIC_ADDRESS}", f"node2.{domain}") == [mesh.members["node2"].mesh_ipv4]
    assert short(mesh, "node1", "+tcp", UPSTREAM_NAME) == [UPSTREAM_ANSWER]


def test_listens_on_mesh_addresses_across_the_tunnel(dns_mesh: DnsMesh) -> None:
    """node1 asks node2's MagicDNS on node2's mesh addresses, through WireGuard."""
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    node2, node3 = mesh.members["node2"], mesh.members["node3"]
    for server in (node2.mesh_ipv4, node2.mesh_ipv6):
        assert short(mesh, "node1", f"@{server}", f"node3.{domain}") == [node3.mesh_ipv4], server


def test_a_member_gets_mesh_names_but_no_forwarding_from_another_node(dns_mesh: DnsMesh) -> None:
    """Issue 16 item 5: node2's upstream resolvers are node2's own; node1 gets REFUSED there,
    and its own MagicDNS still forwards for it."""
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    node2 = mesh.members["node2"]
    for server in (node2.mesh_ipv4, node2.mesh_ipv6):
        out = dig(mesh, "node1", f"@{server}", UPSTREAM_NAME)
        assert status(out) == "REFUSED" and " ra" not in out.split("flags:")[1].split(";")[0], out
        assert short(mesh, "node1", f"@{server}", f"node3.{domain}") == [mesh.members["node3"].mesh_ipv4]
    assert short(mesh, "node1", f"@{MAGIC_ADDRESS}", UPSTREAM_NAME) == [UPSTREAM_ANSWER]


SERVICE_PORT: Final = 8022  # a service bound to node1's mesh address only
LISTEN_SCRIPT: Final = """
import socket, sys
socks = []
for host in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, PORT)); s.listen(16); socks.append(s)
print("ready", flush=True)
import select
while True:
    for s in select.select(socks, [], [])[0]:
        s.accept()[0].close()
""".replace("PORT", str(SERVICE_PORT))
CONNECT_SCRIPT: Final = """
import socket, sys
host = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.settimeout(2)
try:
    s.connect((host, int(sys.argv[2])))
except OSError as exc:
    print(type(exc).__name__); sys.exit(1)
print("connected")
"""


def test_a_lan_stranger_reaches_no_mesh_address_nor_magicdns(dns_mesh: DnsMesh) -> None:
    """Issue 23: the git host shares node1's LAN but is no member. With routes to the mesh's
    prefixes through node1 it neither connects to a service bound to node1's mesh addresses
    (IPv4 and IPv6) nor gets an answer from its MagicDNS; node2, a member, does both."""
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    lab, node1 = mesh.lab, mesh.members["node1"]
    stranger = next(ns for ns in lab.namespaces if ns.endswith("-git"))
    prefix6 = ipaddress.ip_network(f"{node1.mesh_ipv6}/48", strict=False)
    lab.run(stranger, ["ip", "route", "add", "100.64.0.0/10", "via", str(node1.node.ipv4)])
    lab.run(stranger, ["ip", "route", "add", MAGIC_ADDRESS, "via", str(node1.node.ipv4)])
    lab.run(stranger, ["ip", "-6", "route", "add", str(prefix6), "via", str(node1.node.ipv6)])
    service = lab.popen(node1.node, [sys.executable, "-c", LISTEN_SCRIPT, node1.mesh_ipv4, node1.mesh_ipv6],
                        stdout=subprocess.PIPE)
    assert service.stdout is not None and service.stdout.readline().strip() == "ready"
    try:
        for ip in (node1.mesh_ipv4, node1.mesh_ipv6):
            tried = lab.run(stranger, [sys.executable, "-c", CONNECT_SCRIPT, ip, str(SERVICE_PORT)], check=False)
            assert tried.returncode == 1, f"a non-member on the LAN connected to [{ip}]:{SERVICE_PORT}"
            member = lab.run(mesh.members["node2"].node, [sys.executable, "-c", CONNECT_SCRIPT, ip,
                                                           str(SERVICE_PORT)], check=False)
            assert member.returncode == 0, member.stdout
        for server in (MAGIC_ADDRESS, node1.mesh_ipv4, node1.mesh_ipv6):
            asked = lab.run(stranger, ["dig", "+time=1", "+tries=2", f"@{server}", f"node2.{domain}"], check=False)
            assert "Got answer" not in asked.stdout, asked.stdout
            assert short(mesh, "node2", f"@{node1.mesh_ipv4}", f"node3.{domain}") == [mesh.members["node3"].mesh_ipv4]
    finally:
        lab.kill(service)


def test_cron_sync_beside_the_agent_keeps_magicdns(dns_mesh: DnsMesh) -> None:
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    want = [mesh.members["node3"].mesh_ipv4]
    try:
        mesh.meshctl("node2", "sync")
        assert short(mesh, "node2", "+tries=1", f"@{MAGIC_ADDRESS}", f"node3.{domain}") == want
    finally:
        agent_sync(mesh, "node2")  # the agent's pass puts the address back
        wait_until(lambda: answers(mesh, "node2", f"@{MAGIC_ADDRESS}", f"node3.{domain}", want=want),
                   "MagicDNS back on node2")


# --- changes for good --------------------------------------------------------------------------


def test_rename_through_the_repository(dns_mesh: DnsMesh) -> None:
    """The admin revokes node3; the device re-joins as node3b with its same keys (a member cannot
    rename itself) and is approved with the same address. After a sync, node3b resolves and node3
    is NXDOMAIN."""
    mesh, domain = dns_mesh.mesh, dns_mesh.domain
    old = mesh.members["node3"]
    old_key = next(p["wg_public_key"] for p in mesh.status("node1")["peers"] if p["name"] == "node3")

    mesh.revoke("node3")
    mesh.join(old.node, "node3b", f"{old.node.ipv4}:51820", "--rename")  # same device, same keys
    mesh.approve("node3b", "--ip", old.mesh_ipv4, "--allow-revoked-key")  # its keys, knowingly back
    agent_sync(mesh, "node1")

    new = [old.mesh_ipv4]
    wait_until(lambda: answers(mesh, "node1", f"node3b.{domain}", want=new), "node3b resolves")
    assert status(dig(mesh, "node1", f"node3.{domain}")) == "NXDOMAIN"
    assert short(mesh, "node1", "AAAA", f"node3b.{domain}") == [old.mesh_ipv6]
    assert short(mesh, "node1", "-x", old.mesh_ipv4) == [f"node3b.{domain}."]
    peers = {p["name"]: p["wg_public_key"] for p in mesh.status("node1")["peers"]}
    assert peers.get("node3b") == old_key and "node3" not in peers, peers
    # The renamed device takes its new name on its next pass and is reachable as before.
    agent_sync(mesh, "node3b")
    assert mesh.ping("node1", old.mesh_ipv4)


def test_down_restores_resolv_conf_byte_for_byte(dns_mesh: DnsMesh) -> None:
    mesh = dns_mesh.mesh
    assert dns_mesh.resolv_conf.read_bytes() != dns_mesh.original  # MagicDNS had rewritten it
    mesh.meshctl("node1", "down")
    assert dns_mesh.resolv_conf.read_bytes() == dns_mesh.original
    # The system's DNS works as before: straight to the previous upstream.
    assert short(mesh, "node1", UPSTREAM_NAME) == [UPSTREAM_ANSWER]
