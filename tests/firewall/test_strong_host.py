"""The strong host model for the mesh's addresses (issue 23): reachable only through the mesh.

The picture (the nspair of conftest.py plus a LAN)::

    client fwc-<id>                 server fws-<id> ("prod")                 neighbour fwl-<id>
    pc<id> 100.64.0.2-.9  <->  mesh<id> 100.64.0.1, fd7a:115c:a1e0::1            (not a member)
           fd7a:115c:a1e0::2        100.100.100.100
                                    lan<id> 192.168.77.1, fd00:77::1  <->  nb<id> 192.168.77.2, fd00:77::2
                                                                          routes 100.64.0.0/10 and
                                                                          fd7a:115c:a1e0::/48 via prod

Every "before" below is the control: the same packet reaches prod with no meshctl table (what
Linux's weak host model does), so each test fails on a filter that hangs on the mesh interface
only.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from firewall_lab import NsPair, _sh, queued, sample_filter

from meshctl.firewall.apply import apply_filter, remove_table
from meshctl.firewall.nft import Layout
from meshctl.firewall.ruleset import strong_host_rules

PROD4, PROD6, MAGIC = "100.64.0.1", "fd7a:115c:a1e0::1", "100.100.100.100"
DEV4, DEV6, OPS4 = "100.64.0.2", "fd7a:115c:a1e0::2", "100.64.0.3"
LAN_PROD4, LAN_PROD6 = "192.168.77.1", "fd00:77::1"
LAN_NB4, LAN_NB6 = "192.168.77.2", "fd00:77::2"


@dataclass
class Trio:
    pair: NsPair
    neighbour: str

    @property
    def server(self) -> str:
        return self.pair.server

    @property
    def mesh_if(self) -> str:
        return self.pair.mesh_if

    def bound(self, ns: str, kind: int, addr: str, port: int) -> socket.socket:
        """A socket in `ns` bound to [addr]:port, of addr's family."""
        sock = self.pair.socket(ns, kind, socket.AF_INET6 if ":" in addr else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        return sock

    def listen(self, ns: str, addr: str, port: int) -> socket.socket:
        srv = self.bound(ns, socket.SOCK_STREAM, addr, port)
        srv.listen(8)
        srv.setblocking(False)
        return srv

    def connects(self, ns: str, src: str, dst: str, port: int) -> bool:
        cli = self.bound(ns, socket.SOCK_STREAM, src, 0)
        cli.settimeout(1.0)
        try:
            cli.connect((dst, port))
        except (TimeoutError, ConnectionRefusedError, OSError):
            return False
        finally:
            cli.close()
        return True

    def udp(self, ns: str, addr: str, port: int) -> socket.socket:
        sock = self.bound(ns, socket.SOCK_DGRAM, addr, port)
        sock.settimeout(1.0)
        return sock


def _ns_sh(ns: str, *args: str) -> None:
    _sh("ip", "netns", "exec", ns, *args)


@pytest.fixture
def trio(nspair: NsPair) -> Iterator[Trio]:
    tag = nspair.mesh_if[4:]
    neighbour = f"fwl-{tag}"
    client_if = f"pc{tag}"
    try:
        _sh("ip", "netns", "add", neighbour)
        _sh("ip", "link", "add", f"nb{tag}", "netns", neighbour, "type", "veth", "peer", "name", f"lan{tag}",
            "netns", nspair.server)
        _sh("ip", "-n", neighbour, "link", "set", "lo", "up")
        _sh("ip", "-n", neighbour, "link", "set", f"nb{tag}", "up")
        _sh("ip", "-n", nspair.server, "link", "set", f"lan{tag}", "up")
        for ns, ifname, addrs in ((nspair.server, f"lan{tag}", (f"{LAN_PROD4}/24", f"{LAN_PROD6}/64")),
                                  (neighbour, f"nb{tag}", (f"{LAN_NB4}/24", f"{LAN_NB6}/64")),
                                  (nspair.server, nspair.mesh_if, (f"{PROD6}/64", f"{MAGIC}/32")),
                                  (nspair.client, client_if, (f"{DEV6}/64",))):
            for addr in addrs:
                _sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname, *(("nodad",) if ":" in addr else ()))
        # The neighbour routes the mesh through prod, as an attacker on prod's LAN would.
        _sh("ip", "-n", neighbour, "route", "add", "100.64.0.0/10", "via", LAN_PROD4)
        _sh("ip", "-n", neighbour, "route", "add", MAGIC, "via", LAN_PROD4)
        _sh("ip", "-n", neighbour, "-6", "route", "add", "fd7a:115c:a1e0::/48", "via", LAN_PROD6)
        _sh("ip", "-n", nspair.client, "route", "add", "192.168.77.0/24", "via", PROD4)
        # rp_filter off (a new namespace's default, said here so it is not what drops anything);
        # prod forwards, as a subnet router will (issue 19).
        _ns_sh(nspair.server, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
               f"net.ipv4.conf.lan{tag}.rp_filter=0", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        yield Trio(nspair, neighbour)
    finally:
        subprocess.run(["ip", "netns", "del", neighbour], capture_output=True)


def _got(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(100)
    except TimeoutError:
        return None


# --- pure -----------------------------------------------------------------------------------


def test_the_rules_keep_every_mesh_address_and_source_to_the_mesh_interface() -> None:
    pf = sample_filter("prod")
    rules = strong_host_rules(pf, "mesh0")
    texts = [" ".join(m.text for m in r.matches) + " " + r.verdict for r in rules]
    assert texts == [
        'iifname "mesh0" accept',
        'iif "lo" accept',
        "ip daddr { 100.64.0.1, 100.100.100.100 } drop",
        "ip saddr 100.64.0.0/10 drop",
        "ip6 daddr fd7a:115c:a1e0::1 drop",
        "ip6 saddr fd7a:115c:a1e0::/48 drop",
    ]
    # Other prefixes (an admin's --cidr) are what is kept, not a fixed 100.64.0.0/10.
    narrow = type(pf)(pf.node, pf.addresses, pf.rules, pf.echo,
                      (ipaddress.ip_network("100.100.0.0/16"), ipaddress.ip_network("fd00:1::/48")))
    texts = [" ".join(m.text for m in r.matches) for r in strong_host_rules(narrow, "m")]
    assert "ip saddr 100.100.0.0/16" in texts and "ip6 saddr fd00:1::/48" in texts


# --- in the kernel ---------------------------------------------------------------------------


@pytest.mark.netns
def test_a_lan_neighbour_reaches_no_service_on_the_mesh_addresses(trio: Trio, layout: Layout) -> None:
    """Not on a port the policy denies even to members (22 for dev), nor on one it allows
    (443), over IPv4 and IPv6; members still reach what the policy allows them."""
    listeners = {(addr, port): trio.listen(trio.server, addr, port) for addr in (PROD4, PROD6) for port in (22, 443)}
    for (addr, port), listener in listeners.items():  # the weak host model, without meshctl's tables
        assert trio.connects(trio.neighbour, LAN_NB6 if ":" in addr else LAN_NB4, addr, port), (addr, port)
        assert queued(listener) == 1
    apply_filter(sample_filter("prod"), trio.mesh_if, trio.server)
    for (addr, port), listener in listeners.items():
        assert not trio.connects(trio.neighbour, LAN_NB6 if ":" in addr else LAN_NB4, addr, port), (addr, port)
        assert queued(listener) == 0, f"a SYN from the LAN reached [{addr}]:{port}"
    # Members, through the mesh interface: what the policy says, on both families.
    assert trio.connects(trio.pair.client, DEV4, PROD4, 443) and trio.connects(trio.pair.client, DEV6, PROD6, 443)
    assert not trio.connects(trio.pair.client, DEV4, PROD4, 22)
    assert trio.connects(trio.pair.client, OPS4, PROD4, 22)
    assert queued(listeners[(PROD4, 443)]) == 1 and queued(listeners[(PROD6, 443)]) == 1
    assert queued(listeners[(PROD4, 22)]) == 1
    # The node itself still reaches its own mesh addresses (over loopback).
    assert trio.connects(trio.server, PROD4, PROD4, 22) and trio.connects(trio.server, PROD6, PROD6, 22)
    for listener in listeners.values():
        listener.close()


@pytest.mark.netns
def test_the_magicdns_address_is_not_reachable_from_the_lan(trio: Trio, layout: Layout) -> None:
    dns = trio.udp(trio.server, MAGIC, 53)
    asker = trio.udp(trio.neighbour, LAN_NB4, 0)
    asker.sendto(b"query", (MAGIC, 53))
    assert _got(dns) == b"query"  # control: the weak host model
    apply_filter(sample_filter("prod"), trio.mesh_if, trio.server)
    asker.sendto(b"query", (MAGIC, 53))
    assert _got(dns) is None
    local = trio.udp(trio.server, "127.0.0.1", 0)
    local.sendto(b"query", (MAGIC, 53))
    assert _got(dns) == b"query", "the node itself must keep its MagicDNS"
    for sock in (dns, asker, local):
        sock.close()


@pytest.mark.netns
def test_a_mesh_source_arriving_from_the_lan_is_dropped(trio: Trio, layout: Layout) -> None:
    """A neighbour claiming a member's address (a service that trusts mesh sources would believe
    it) reaches nothing, not even prod's LAN address."""
    _sh("ip", "-n", trio.neighbour, "addr", "add", f"{DEV4}/32", "dev", f"nb{trio.mesh_if[4:]}")
    _sh("ip", "-n", trio.neighbour, "addr", "add", f"{DEV6}/128", "dev", f"nb{trio.mesh_if[4:]}", "nodad")
    service4, service6 = trio.udp(trio.server, "0.0.0.0", 5000), trio.udp(trio.server, "::", 5001)
    spoof4, spoof6 = trio.udp(trio.neighbour, DEV4, 0), trio.udp(trio.neighbour, DEV6, 0)
    honest, honest6 = trio.udp(trio.neighbour, LAN_NB4, 0), trio.udp(trio.neighbour, LAN_NB6, 0)
    # Neighbour discovery first, from an honest address: resolving prod's address from the mesh
    # source would have prod answer into its mesh interface (where it routes that source).
    honest6.sendto(b"hello", (LAN_PROD6, 5001))
    assert _got(service6) == b"hello"
    spoof4.sendto(b"spoofed", (LAN_PROD4, 5000))
    spoof6.sendto(b"spoofed", (LAN_PROD6, 5001))
    assert _got(service4) == b"spoofed" and _got(service6) == b"spoofed"  # control
    apply_filter(sample_filter("prod"), trio.mesh_if, trio.server)
    spoof4.sendto(b"spoofed", (LAN_PROD4, 5000))
    spoof6.sendto(b"spoofed", (LAN_PROD6, 5001))
    assert _got(service4) is None and _got(service6) is None
    honest.sendto(b"lan", (LAN_PROD4, 5000))
    assert _got(service4) == b"lan", "LAN traffic that claims no mesh address must pass"
    for sock in (service4, service6, spoof4, spoof6, honest, honest6):
        sock.close()


@pytest.mark.netns
def test_routed_traffic_between_the_lan_and_members_is_not_the_strong_hosts(trio: Trio, layout: Layout) -> None:
    """Only the node's own mesh addresses and mesh sources from elsewhere are dropped: a LAN host
    still reaches a member through the node (the way replies come back through a subnet router,
    issue 19), and the node's own connections to the LAN work."""
    apply_filter(sample_filter("prod"), trio.mesh_if, trio.server)
    member = trio.udp(trio.pair.client, DEV4, 6000)
    lan = trio.udp(trio.neighbour, LAN_NB4, 6001)
    lan.sendto(b"routed", (DEV4, 6000))
    assert _got(member) == b"routed"
    web = trio.listen(trio.neighbour, LAN_NB4, 8080)
    assert trio.connects(trio.server, LAN_PROD4, LAN_NB4, 8080)
    assert queued(web) == 1
    for sock in (member, lan, web):
        sock.close()


@pytest.mark.netns
def test_down_removes_the_strong_host_with_the_filter(trio: Trio) -> None:
    apply_filter(sample_filter("prod"), trio.mesh_if, trio.server)
    assert remove_table(trio.server)
    listed = subprocess.run(["ip", "netns", "exec", trio.server, "nft", "list", "tables"], capture_output=True,
                            text=True, check=True).stdout
    assert "meshctl" not in listed
    listener = trio.listen(trio.server, PROD4, 22)
    assert trio.connects(trio.neighbour, LAN_NB4, PROD4, 22)
    listener.close()


def test_fixture_names_fit_interface_limits() -> None:
    tag = secrets.token_hex(3)
    assert max(len(f"lan{tag}"), len(f"nb{tag}"), len(f"mesh{tag}")) <= 15
