"""Fixtures for the kernel-WireGuard tests; helpers live in kernel_harness.py."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from kernel_harness import IN_VM, NOT_IN_VM_REASON, Node, Pair, preload, sh


@pytest.fixture(scope="session")
def kernel_wireguard() -> None:
    """Skip outside the VM; inside, load the module or fail (the VM exists to have it)."""
    if not IN_VM:
        pytest.skip(NOT_IN_VM_REASON)
    for tool in ("ip", "wg", "ping", "modprobe"):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is not installed on the host filesystem the VM shares")
    sh("modprobe", "wireguard")
    preload()


@pytest.fixture
def pair(kernel_wireguard: None) -> Iterator[Pair]:
    """Two namespaces joined by a veth pair, with lo up; WireGuard interfaces are left to tests."""
    suffix = secrets.token_hex(3)
    a = Node(f"kA-{suffix}", f"wgA{suffix}", "192.0.2.1", "10.66.0.1", "fd66::1")
    b = Node(f"kB-{suffix}", f"wgB{suffix}", "192.0.2.2", "10.66.0.2", "fd66::2")
    made: list[str] = []
    try:
        for node in (a, b):
            sh("ip", "netns", "add", node.ns)
            made.append(node.ns)
            sh("ip", "-n", node.ns, "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", f"va{suffix}", "netns", a.ns, "type", "veth",
            "peer", "name", f"vb{suffix}", "netns", b.ns,
        )
        for node, veth in ((a, f"va{suffix}"), (b, f"vb{suffix}")):
            sh("ip", "-n", node.ns, "addr", "add", f"{node.underlay}/24", "dev", veth)
            sh("ip", "-n", node.ns, "link", "set", veth, "up")
        yield Pair(a, b)
    finally:
        for ns in made:  # deleting a namespace deletes its interfaces too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
