"""Helpers for the kernel-WireGuard tests (run inside the VM booted by scripts/test-kernel.sh).

Outside the VM every test here is skipped: the host kernel has no WireGuard module, so these tests
would only measure the userspace fallback, which tests/ covers elsewhere.

Topology built by the `pair` fixture in conftest.py (unique names, always cleaned up)::

    ns kA-xxxx                                  ns kB-xxxx
    veth 192.0.2.1/24   <------ veth ------>    veth 192.0.2.2/24
    wg   10.66.0.1/24, fd66::1/64               wg   10.66.0.2/24, fd66::2/64
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import pytest

IN_VM: Final = os.environ.get("MESHCTL_IN_VM") == "1"
NOT_IN_VM_REASON: Final = (
    "kernel WireGuard tests run only inside the VM booted by scripts/test-kernel.sh "
    "(make test-kernel): MESHCTL_IN_VM=1 is not set"
)
# A child doing netlink work in a namespace; generous because the VM is emulated (TCG).
CHILD_TIMEOUT_S: Final = 120.0

T = TypeVar("T")

# Test helper only (PyInstaller's literal-import rule is for meshctl itself).
PRELOAD_MODULES: Final = (
    "pyroute2",
    "pyroute2.netns",
    "pyroute2.netlink.generic.wireguard",
    "meshctl.wg.backend",
    "meshctl.wg.chunks",
    "meshctl.wg.kernel",
    "meshctl.wg.userspace",
    "meshctl.router.config",
    "meshctl.router.linux",
)


def preload() -> None:
    """Import what the children use, once, before any fork.

    meshctl imports pyroute2 inside functions, so without this every forked child would import
    pyroute2 (~230 modules) again over the VM's 9p root: about 30 s each under TCG.
    """
    for name in PRELOAD_MODULES:
        importlib.import_module(name)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if check and proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in a forked child that entered network namespace `ns`; return its result.

    Netlink (rtnetlink and the WireGuard generic family) acts on the caller's namespace, so each
    node's configuration runs in a child. The result must be picklable; an exception in the child
    fails the test with the child's traceback.
    """
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)

    def child() -> None:
        from pyroute2 import netns

        try:
            netns.setns(ns, flags=0)
            writer.send(("ok", fn(*args)))
        except BaseException:  # report everything to the parent, which fails the test
            writer.send(("error", traceback.format_exc()))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    writer.close()
    try:
        if not reader.poll(CHILD_TIMEOUT_S):
            pytest.fail(f"child in netns {ns} gave no answer within {CHILD_TIMEOUT_S} s")
        status, value = reader.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        pytest.fail(f"in netns {ns}:\n{value}")
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Node:
    ns: str
    ifname: str  # the WireGuard interface (made by the test)
    underlay: str  # veth address, the WireGuard endpoint host
    mesh4: str
    mesh6: str


@dataclass(frozen=True, slots=True)
class Pair:
    a: Node
    b: Node


def add_mesh_addresses(node: Node) -> None:
    """Addresses and up on the node's WireGuard interface (the router's job in meshctl)."""
    sh("ip", "-n", node.ns, "addr", "add", f"{node.mesh4}/24", "dev", node.ifname)
    sh("ip", "-n", node.ns, "addr", "add", f"{node.mesh6}/64", "dev", node.ifname, "nodad")
    sh("ip", "-n", node.ns, "link", "set", node.ifname, "up")


def ping(node: Node, target: str) -> subprocess.CompletedProcess[str]:
    """Ping from inside `node`; the first packet also waits for the WireGuard handshake."""
    return sh("ip", "netns", "exec", node.ns, "ping", "-c", "3", "-i", "0.2", "-w", "20", target,
              check=False)


def wg_dump(node: Node) -> list[list[str]]:
    """`wg show IF dump`, split into fields: first the interface line, then one line per peer.

    Interface: private key (hidden), public key, listen port, fwmark. Peer: public key,
    preshared key, endpoint, allowed IPs, latest handshake, rx, tx, persistent keepalive.
    """
    out = sh("ip", "netns", "exec", node.ns, "wg", "show", node.ifname, "dump").stdout
    fields = [line.split("\t") for line in out.splitlines() if line]
    if fields:
        fields[0][0] = "(hidden)"  # the private key: never let an assertion message print it
    return fields
