"""Helpers for the router tests: one throwaway namespace with a tun interface."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body inside network namespace `name` (setns on this thread, then back)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise RuntimeError("cannot return to the original network namespace")
    finally:
        os.close(home)
        os.close(target)


def ip(*argv: str, ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "ip", *argv], capture_output=True,
                          text=True, check=True, timeout=10).stdout


@pytest.fixture
def dummy_ns() -> Iterator[tuple[str, str]]:
    """(namespace, ifname): a tun link (what wireguard-go creates) standing in for the WireGuard interface."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("needs `ip` (iproute2)")
    sfx = secrets.token_hex(3)
    ns, ifname = f"mcr-{sfx}", f"mcr{sfx}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        ip("tuntap", "add", "mode", "tun", "name", ifname, ns=ns)
        ip("tuntap", "add", "mode", "tun", "name", f"other{sfx}", ns=ns)
        yield ns, ifname
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)
