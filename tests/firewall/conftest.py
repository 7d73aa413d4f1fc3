"""Fixtures for firewall tests (helpers live in firewall_lab.py)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest
from firewall_lab import CLIENT_ADDRS, NsPair, _sh, missing_tools

from meshctl.firewall import apply
from meshctl.firewall.apply import layout_for
from meshctl.firewall.nft import Layout


@pytest.fixture
def nspair() -> Iterator[NsPair]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    pair = NsPair(client=f"fwc-{tag}", server=f"fws-{tag}", mesh_if=f"mesh{tag}")
    try:
        _sh("ip", "netns", "add", pair.client)
        _sh("ip", "netns", "add", pair.server)
        _sh(
            "ip",
            "link",
            "add",
            f"pc{tag}",
            "netns",
            pair.client,
            "type",
            "veth",
            "peer",
            "name",
            pair.mesh_if,
            "netns",
            pair.server,
        )
        for ns, ifname in ((pair.client, f"pc{tag}"), (pair.server, pair.mesh_if)):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", ifname, "up")
        _sh("ip", "-n", pair.server, "addr", "add", "100.64.0.1/24", "dev", pair.mesh_if)
        for addr in CLIENT_ADDRS:
            _sh("ip", "-n", pair.client, "addr", "add", f"{addr}/24", "dev", f"pc{tag}")
        yield pair
    finally:
        for ns in (pair.client, pair.server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    """A namespace with one interface, mesh0, for loading rulesets without touching the host's."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    name = f"fwx-{secrets.token_hex(3)}"
    _sh("ip", "netns", "add", name)
    _sh("ip", "-n", name, "link", "add", "mesh0", "type", "veth", "peer", "name", "mesh0-peer")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(params=list(Layout), ids=lambda la: la.name)
def layout(request: pytest.FixtureRequest, nspair: NsPair) -> Iterator[Layout]:
    """Run a test in both layouts: HOOKS as on a kernel whose egress hook nft cannot use."""
    key = (nspair.server, nspair.mesh_if)
    if request.param is Layout.HOOKS:
        apply._DEVICE_HOOKS[key] = False
    try:
        assert layout_for(nspair.mesh_if, nspair.server) is request.param
        yield request.param
    finally:
        apply._DEVICE_HOOKS.pop(key, None)
