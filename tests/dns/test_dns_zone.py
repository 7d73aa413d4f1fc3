"""NetMap -> Zone: names, addresses, reverse map, validation (pure)."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest
from dnssupport import PEERS, make_netmap, make_peer

from meshctl.dns.zone import (
    ZoneError,
    is_valid_label,
    normalize_domain,
    reverse_apex,
    reverse_routing_domains,
    zone_from_netmap,
)


def test_names_are_lowercased_and_resolve_to_all_addresses() -> None:
    zone = zone_from_netmap(make_netmap([make_peer("Desktop", "100.64.0.1", "fd7a:115c:a1e0::1")]))
    assert zone.addresses("desktop") == (
        ipaddress.ip_address("100.64.0.1"),
        ipaddress.ip_address("fd7a:115c:a1e0::1"),
    )
    assert zone.addresses("Desktop") is None  # lookups take the lowercased label
    assert zone.fqdn("desktop") == "desktop.example.mesh"


def test_reverse_map_covers_mesh_addresses_only() -> None:
    zone = zone_from_netmap(make_netmap([make_peer("odd", "100.64.0.9", "10.0.0.9")]))
    assert zone.ptr("9.0.64.100.in-addr.arpa") == "odd.example.mesh"
    assert zone.ptr("9.0.0.10.in-addr.arpa") is None  # not in the mesh CIDR


def test_ipv6_reverse_name() -> None:
    zone = zone_from_netmap(make_netmap(PEERS))
    rev = ipaddress.ip_address("fd7a:115c:a1e0::2").reverse_pointer
    assert zone.ptr(rev) == "laptop.example.mesh"


def test_domain_is_normalized() -> None:
    zone = zone_from_netmap(make_netmap(PEERS, domain="Example.Mesh."))
    assert zone.domain == "example.mesh"


@pytest.mark.parametrize("bad", ["", ".", "a..b", "-x.mesh", "x-.mesh", "x_y.mesh", "a" * 64 + ".m"])
def test_invalid_domain_raises_zone_error(bad: str) -> None:
    with pytest.raises(ZoneError):
        normalize_domain(bad)


def test_invalid_and_colliding_names_are_skipped_not_fatal() -> None:
    peers = [
        make_peer("good", "100.64.0.1"),
        make_peer("under_score", "100.64.0.2"),
        make_peer("GOOD", "100.64.0.3"),  # collides with "good" after lowercasing
        make_peer("-dash", "100.64.0.4"),
    ]
    zone = zone_from_netmap(make_netmap(peers))
    assert [label for label, _ in zone.hosts] == ["good"]
    assert set(zone.skipped) == {"under_score", "good", "-dash"}
    # sorted by name: "GOOD" < "good", so the uppercase record took the label first
    assert zone.addresses("good") == (ipaddress.ip_address("100.64.0.3"),)


@pytest.mark.parametrize(
    ("label", "ok"),
    [
        ("a", True),
        ("a-b", True),
        ("0day", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("A", False),
        ("a.b", False),
        ("", False),
        ("é", False),
    ],
)
def test_label_rules(label: str, ok: bool) -> None:
    assert is_valid_label(label) is ok


def test_reverse_apex_rounds_down_to_octet_and_nibble() -> None:
    assert reverse_apex(ipaddress.IPv4Network("100.64.0.0/10")) == "100.in-addr.arpa"
    assert reverse_apex(ipaddress.IPv4Network("10.1.0.0/16")) == "1.10.in-addr.arpa"
    assert reverse_apex(ipaddress.IPv6Network("fd7a:115c:a1e0::/48")) == ("0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa")


def test_reverse_routing_domains_cover_the_prefix_exactly() -> None:
    doms = reverse_routing_domains(ipaddress.IPv4Network("100.64.0.0/10"), limit=64)
    assert len(doms) == 64
    assert doms[0] == "64.100.in-addr.arpa" and doms[-1] == "127.100.in-addr.arpa"
    assert reverse_routing_domains(ipaddress.IPv4Network("100.64.0.0/10"), limit=63) == ()
    assert reverse_routing_domains(ipaddress.IPv6Network("fd7a:115c:a1e0::/48"), limit=1) == (
        "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa",
    )


def test_serial_and_soa_follow_the_netmap() -> None:
    zone = zone_from_netmap(make_netmap(PEERS, serial=42))
    assert zone.soa.serial == 42
    assert zone.soa.mname == "example.mesh"


PURE_MODULES = ["zone.py", "resolver.py", "resolvconf.py"]
FORBIDDEN = {"asyncio", "socket", "subprocess", "pyroute2", "os", "time", "pathlib"}


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_modules_import_no_io(name: str) -> None:
    path = Path(__file__).parents[2] / "meshctl" / "dns" / name
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    bad = imported & FORBIDDEN
    assert not bad, f"meshctl/dns/{name} is pure but imports {sorted(bad)}: move I/O to a shell"


def test_listen_addresses_and_routing_domains() -> None:
    from meshctl.dns.zone import listen_addresses

    netmap = make_netmap(PEERS).with_self("desktop")
    assert listen_addresses(netmap) == ("100.100.100.100", "100.64.0.1", "fd7a:115c:a1e0::1")
    assert listen_addresses(make_netmap(PEERS)) == ("100.100.100.100",)
    doms = zone_from_netmap(netmap).reverse_routing_domains()
    assert len(doms) == 65 and "100.100.in-addr.arpa" in doms and doms[-1].endswith("ip6.arpa")
