"""Helpers for the WireGuard tests: fixed keys, a fake backend, and a two-namespace lab.

The lab is two network namespaces joined by a veth pair. Code under test runs in a namespace
through `in_netns()`, which moves the calling thread with setns(2) and back: exactly what
`ip netns exec` does to a whole process, so backends see the same world as `meshctl` would.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshctl.keys import NodePrivate
from meshctl.wg.config import DeviceState, DeviceUpdate, apply_update

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def fixed_private(n: int) -> NodePrivate:
    """A deterministic key for golden tests (`n` in 1..255)."""
    return NodePrivate(bytes([n]) * 32)


class FakeBackend:
    """A WireGuard device in memory with the semantics of `apply_update`; counts calls."""

    name = "fake"

    def __init__(self, state: DeviceState | None = None) -> None:
        self.state = state or DeviceState(listen_port=40000)
        self.applied: list[DeviceUpdate] = []
        self.present = True

    def ensure_device(self) -> None:
        self.present = True

    def read(self) -> DeviceState:
        return self.state

    def apply(self, update: DeviceUpdate) -> None:
        if update.is_empty():
            return
        self.applied.append(update)
        self.state = apply_update(self.state, update)

    def tune_sockets(self, listen_port: int) -> None:
        pass

    def remove_device(self) -> None:
        self.present = False
        self.state = DeviceState()

    def exists(self) -> bool:
        return self.present


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body (and any process it spawns) inside network namespace `name`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise RuntimeError("cannot return to the original network namespace")
    finally:
        os.close(home)
        os.close(target)


def netns_missing() -> str | None:
    """Why the netns tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "wireguard-go", "wg", "ping"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` on PATH"
    return None


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Lab:
    """Two namespaces `a` and `b`, veth 10.x.y.1/24 <-> 10.x.y.2/24, unique interface names."""

    suffix: str
    a: str
    b: str
    a_underlay: str
    b_underlay: str
    wg_a: str
    wg_b: str

    def wg_names(self) -> tuple[str, ...]:
        return (self.wg_a, self.wg_b)


def _kill_wireguard_go(ifname: str) -> None:
    from meshctl.wg.userspace import find_wireguard_go

    pid = find_wireguard_go(ifname)
    if pid is not None:
        os.kill(pid, 15)
    Path(f"/var/run/wireguard/{ifname}.sock").unlink(missing_ok=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = netns_missing()
    if reason:
        pytest.skip(reason)
    sfx = secrets.token_hex(3)
    octet = int(sfx[:2], 16)
    lab = Lab(
        suffix=sfx,
        a=f"mcwa-{sfx}",
        b=f"mcwb-{sfx}",
        a_underlay=f"10.200.{octet}.1",
        b_underlay=f"10.200.{octet}.2",
        wg_a=f"wga{sfx}",
        wg_b=f"wgb{sfx}",
    )
    created: list[str] = []
    try:
        for ns in (lab.a, lab.b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "add", f"va{sfx}", "netns", lab.a, "type", "veth",
           "peer", "name", f"vb{sfx}", "netns", lab.b)
        sh("ip", "addr", "add", f"{lab.a_underlay}/24", "dev", f"va{sfx}", ns=lab.a)
        sh("ip", "addr", "add", f"{lab.b_underlay}/24", "dev", f"vb{sfx}", ns=lab.b)
        sh("ip", "link", "set", f"va{sfx}", "up", ns=lab.a)
        sh("ip", "link", "set", f"vb{sfx}", "up", ns=lab.b)
        yield lab
    finally:
        for name in (lab.wg_a, lab.wg_b, f"wgc{sfx}"):
            _kill_wireguard_go(name)
        for ns in created:
            sh("ip", "netns", "del", ns, check=False)
