"""apply_router / read_router on a real link in a namespace: only meshctl's things change."""

from __future__ import annotations

import ipaddress

import pytest
from routerlab import in_netns, ip

from meshctl.router.config import RouterConfig, plan_router
from meshctl.router.linux import RouterApplyError, apply_router, read_router, remove_router

pytestmark = pytest.mark.netns


def cfg(n: int) -> RouterConfig:
    return RouterConfig.for_node(
        ipv4=ipaddress.IPv4Address(f"100.64.0.{n}"),
        ipv6=ipaddress.IPv6Address(f"fd7a:115c:a1e0::{n}"),
        ipv4_cidr=ipaddress.IPv4Network("100.64.0.0/10"),
        ipv6_prefix=ipaddress.IPv6Network("fd7a:115c:a1e0::/48"),
        extra_addresses=(ipaddress.IPv4Interface("100.100.100.100/32"),))


def test_apply_read_back_and_ownership(dummy_ns: tuple[str, str]) -> None:
    ns, ifname = dummy_ns
    # Someone else's route through our interface and an address on another interface.
    ip("link", "set", ifname, "up", ns=ns)
    ip("route", "add", "192.0.2.0/24", "dev", ifname, "proto", "static", ns=ns)
    ip("-6", "route", "add", "2001:db8:77::/64", "dev", ifname, "proto", "static", ns=ns)
    with in_netns(ns):
        state = apply_router(ifname, plan_router(read_router(ifname), cfg(5)))
        assert state.render(ifname) == [
            f"{ifname}: up mtu 1420",
            "inet 100.64.0.5/32",
            "inet 100.100.100.100/32",
            "inet6 fd7a:115c:a1e0::5/128",
            f"route 100.64.0.0/10 dev {ifname} proto 109",
            f"route fd7a:115c:a1e0::/48 dev {ifname} proto 109",
        ]
        assert plan_router(read_router(ifname), cfg(5)).is_empty()
        # Renumber: add before delete, end state exact.
        state = apply_router(ifname, plan_router(read_router(ifname), cfg(6)))
        assert "inet 100.64.0.6/32" in state.render(ifname)
        assert "inet 100.64.0.5/32" not in state.render(ifname)
    routes = ip("route", "show", "dev", ifname, ns=ns)
    assert "192.0.2.0/24 proto static" in routes and "100.64.0.0/10 proto 109" in routes
    with in_netns(ns):
        final = remove_router(ifname)
    assert final.addresses == () and final.routes == ()
    # (Removing the last IPv4 address makes the kernel itself flush IPv4 routes via the link,
    # so the survivor to check is the IPv6 one.)
    assert "100.64.0.0/10" not in ip("route", "show", "dev", ifname, ns=ns)
    assert "2001:db8:77::/64 proto static" in ip("-6", "route", "show", "dev", ifname, ns=ns)
    assert ip("-6", "route", "show", "proto", "109", ns=ns).strip() == ""


def test_missing_interface(dummy_ns: tuple[str, str]) -> None:
    ns, _ = dummy_ns
    with in_netns(ns):
        assert read_router("mcnope0").exists is False
        with pytest.raises(RouterApplyError, match="does not exist"):
            apply_router("mcnope0", plan_router(read_router("mcnope0"), cfg(1)))
        assert remove_router("mcnope0").exists is False
