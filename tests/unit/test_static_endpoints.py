"""Static endpoints of peer records, resolved for a pass without an agent (agent/endpoints.py)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from meshctl.agent.endpoints import resolve_endpoint
from meshctl.wg.config import format_endpoint

V4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
V6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(st.one_of(V4, V6), st.integers(1, 65535), st.booleans())
def test_an_ip_literal_resolves_to_its_canonical_form(addr, port: int, upper: bool) -> None:  # type: ignore[no-untyped-def]
    text = f"[{addr.exploded}]" if addr.version == 6 else str(addr)
    text = f"{text.upper() if upper else text}:{port}"
    assert resolve_endpoint(text) == format_endpoint(addr, port)


def test_a_name_is_still_resolved() -> None:
    assert resolve_endpoint("localhost:51820") in ("127.0.0.1:51820", "[::1]:51820")


def test_odd_ports_are_read_as_before() -> None:
    assert resolve_endpoint("10.0.0.1:0051") == "10.0.0.1:51"
    assert resolve_endpoint("10.0.0.1:0") == "10.0.0.1:0"  # not WireGuard's business here: as before
    assert resolve_endpoint("[fd00::1]:7") == "[fd00::1]:7"
