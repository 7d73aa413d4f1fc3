"""plan_router: golden plans, add-before-delete, ownership, and a sequence on a fake link."""

from __future__ import annotations

import ipaddress

import pytest

from meshctl.errors import UsageError
from meshctl.router.config import (
    DEFAULT_MTU,
    RouterConfig,
    RouterState,
    apply_plan_to_state,
    plan_router,
)

IF = "mesh0"
V4 = ipaddress.IPv4Network("100.64.0.0/10")
V6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")


def node(n: int, *extra: str, mtu: int = DEFAULT_MTU) -> RouterConfig:
    return RouterConfig.for_node(
        ipv4=ipaddress.IPv4Address(f"100.64.0.{n}"),
        ipv6=ipaddress.IPv6Address(f"fd7a:115c:a1e0::{n}"),
        ipv4_cidr=V4, ipv6_prefix=V6,
        extra_addresses=tuple(ipaddress.ip_interface(e) for e in extra), mtu=mtu)


FRESH = RouterState(exists=True, up=False, mtu=1500,
                    addresses=(ipaddress.ip_interface("fe80::1/64"),))


def test_fresh_interface_golden() -> None:
    assert plan_router(FRESH, node(5, "100.100.100.100/32")).describe(IF) == [
        "set mesh0 mtu 1420",
        "add address 100.64.0.5/32 dev mesh0",
        "add address 100.100.100.100/32 dev mesh0",
        "add address fd7a:115c:a1e0::5/128 dev mesh0",
        "set mesh0 up",
        "add route 100.64.0.0/10 dev mesh0 proto 109",
        "add route fd7a:115c:a1e0::/48 dev mesh0 proto 109",
    ]


def test_applied_plan_then_nothing() -> None:
    state = apply_plan_to_state(FRESH, plan_router(FRESH, node(5)))
    assert plan_router(state, node(5)).is_empty()


def test_changed_address_adds_before_deleting() -> None:
    state = apply_plan_to_state(FRESH, plan_router(FRESH, node(5)))
    assert plan_router(state, node(6)).describe(IF) == [
        "add address 100.64.0.6/32 dev mesh0",
        "add address fd7a:115c:a1e0::6/128 dev mesh0",
        "delete address 100.64.0.5/32 dev mesh0",
        "delete address fd7a:115c:a1e0::5/128 dev mesh0",
    ]


def test_changed_prefix_adds_route_before_deleting() -> None:
    state = apply_plan_to_state(FRESH, plan_router(FRESH, node(5)))
    wider = RouterConfig(addresses=node(5).addresses,
                         routes=(ipaddress.ip_network("100.0.0.0/8"), V6))
    assert plan_router(state, wider).describe(IF) == [
        "add route 100.0.0.0/8 dev mesh0 proto 109",
        "delete route 100.64.0.0/10 dev mesh0 proto 109",
    ]


def test_remove_everything_keeps_kernel_link_local() -> None:
    state = apply_plan_to_state(FRESH, plan_router(FRESH, node(5)))
    assert plan_router(state, None).describe(IF) == [
        "delete route 100.64.0.0/10 dev mesh0 proto 109",
        "delete route fd7a:115c:a1e0::/48 dev mesh0 proto 109",
        "delete address 100.64.0.5/32 dev mesh0",
        "delete address fd7a:115c:a1e0::5/128 dev mesh0",
    ]
    assert plan_router(RouterState(), None).is_empty()


def test_mtu_change_only() -> None:
    state = apply_plan_to_state(FRESH, plan_router(FRESH, node(5)))
    assert plan_router(state, node(5, mtu=1380)).describe(IF) == ["set mesh0 mtu 1380"]


@pytest.mark.parametrize("mtu", [1279, 0, 70000])
def test_mtu_bounds(mtu: int) -> None:
    with pytest.raises(UsageError, match="MTU"):
        node(1, mtu=mtu)


def test_sequence_of_configs_rendered() -> None:
    state = FRESH
    steps = [
        (node(5), ["mesh0: up mtu 1420", "inet 100.64.0.5/32", "inet6 fd7a:115c:a1e0::5/128",
                   "route 100.64.0.0/10 dev mesh0 proto 109",
                   "route fd7a:115c:a1e0::/48 dev mesh0 proto 109"]),
        (node(5, "100.100.100.100/32"),
         ["mesh0: up mtu 1420", "inet 100.64.0.5/32", "inet 100.100.100.100/32",
          "inet6 fd7a:115c:a1e0::5/128", "route 100.64.0.0/10 dev mesh0 proto 109",
          "route fd7a:115c:a1e0::/48 dev mesh0 proto 109"]),
        (None, ["mesh0: up mtu 1420"]),
    ]
    for cfg, expected in steps:
        state = apply_plan_to_state(state, plan_router(state, cfg))
        rendered = [ln for ln in state.render(IF) if "fe80" not in ln]
        assert rendered == expected
        assert plan_router(state, cfg).is_empty()
