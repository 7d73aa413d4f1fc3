"""End to end: real wireguard-go in two network namespaces, configured through the backend
and the router, pinged over the tunnel, and compared with `wg show dump`."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wglab import Lab, fixed_private, in_netns, netns_missing, sh

from meshctl.errors import MeshctlError
from meshctl.keys import NodePrivate
from meshctl.router.config import RouterConfig, plan_router
from meshctl.router.linux import apply_router, read_router
from meshctl.wg.backend import WireGuardBackend, open_backend
from meshctl.wg.config import DeviceConfig, DeviceState, PeerConfig, plan_update
from meshctl.wg.userspace import UserspaceBackend, find_wireguard_go

pytestmark = pytest.mark.netns

V4_CIDR = ipaddress.IPv4Network("100.64.0.0/10")
V6_PREFIX = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
PORT = 51820
KEY_A, KEY_B, KEY_C = fixed_private(11), fixed_private(12), fixed_private(13)


def mesh_ips(n: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    return ipaddress.IPv4Address(f"100.64.0.{n}"), ipaddress.IPv6Address(f"fd7a:115c:a1e0::{n}")


def peer_of(key: NodePrivate, n: int, endpoint: str | None) -> PeerConfig:
    v4, v6 = mesh_ips(n)
    return PeerConfig(key.public(), (ipaddress.ip_network(v4), ipaddress.ip_network(v6)),
                      endpoint, 25)


def router_cfg(n: int) -> RouterConfig:
    v4, v6 = mesh_ips(n)
    return RouterConfig.for_node(ipv4=v4, ipv6=v6, ipv4_cidr=V4_CIDR, ipv6_prefix=V6_PREFIX)


def sync(ns: str, ifname: str, cfg: DeviceConfig, rcfg: RouterConfig) -> tuple[list[str], list[str]]:
    """One reconcile pass inside `ns`; returns the WireGuard and router plans it applied."""
    with in_netns(ns):
        backend, _ = open_backend(ifname, "userspace")
        backend.ensure_device()
        update = plan_update(backend.read(), cfg)
        backend.apply(update)
        rplan = plan_router(read_router(ifname), rcfg)
        apply_router(ifname, rplan)
    return update.describe(), rplan.describe(ifname)


def ping(ns: str, addr: str, tries: int = 10) -> None:
    for _ in range(tries):
        if sh("ping", "-n", "-c", "1", "-W", "1", addr, ns=ns, check=False).returncode == 0:
            return
    pytest.fail(f"{ns}: no answer from {addr} over the tunnel")


def wg_dump(ns: str, ifname: str) -> list[list[str]]:
    return [ln.split("\t") for ln in sh("wg", "show", ifname, "dump", ns=ns).stdout.splitlines()]


def assert_dump_agrees(ns: str, ifname: str, state: DeviceState) -> None:
    dump = wg_dump(ns, ifname)
    head, peers = dump[0], dump[1:]
    assert state.public_key is not None
    assert head[1] == state.public_key.b64() and int(head[2]) == state.listen_port
    by_key = {p.public_key.b64(): p for p in state.peers}
    assert set(by_key) == {row[0] for row in peers}
    for row in peers:
        ours = by_key[row[0]]
        assert row[2] == (ours.endpoint or "(none)")
        assert set(row[3].split(",")) == ({str(ip) for ip in ours.allowed_ips} or {"(none)"})
        assert int(row[4]) == (ours.last_handshake or 0)
        # read() came first; counters only grow
        assert int(row[5]) >= ours.rx_bytes and int(row[6]) >= ours.tx_bytes
        assert row[7] == (str(ours.persistent_keepalive) if ours.persistent_keepalive else "off")


def test_two_nodes_ping_and_stay_stable(lab: Lab) -> None:
    cfg_a = DeviceConfig(KEY_A, PORT, (peer_of(KEY_B, 2, f"{lab.b_underlay}:{PORT}"),))
    cfg_b = DeviceConfig(KEY_B, PORT, (peer_of(KEY_A, 1, f"{lab.a_underlay}:{PORT}"),))
    wg_a, rt_a = sync(lab.a, lab.wg_a, cfg_a, router_cfg(1))
    sync(lab.b, lab.wg_b, cfg_b, router_cfg(2))
    assert wg_a[0].startswith("set private key") and len(wg_a) == 3
    assert [ln for ln in rt_a if " mtu " not in ln] == [  # wireguard-go already uses 1420
        f"add address 100.64.0.1/32 dev {lab.wg_a}",
        f"add address fd7a:115c:a1e0::1/128 dev {lab.wg_a}",
        f"set {lab.wg_a} up",
        f"add route 100.64.0.0/10 dev {lab.wg_a} proto 109",
        f"add route fd7a:115c:a1e0::/48 dev {lab.wg_a} proto 109",
    ]

    ping(lab.a, "100.64.0.2")
    ping(lab.a, "fd7a:115c:a1e0::2")
    ping(lab.b, "100.64.0.1")

    with in_netns(lab.a):
        backend: WireGuardBackend = UserspaceBackend(lab.wg_a)
        state = backend.read()
        assert read_router(lab.wg_a).render(lab.wg_a) == [
            f"{lab.wg_a}: up mtu 1420",
            "inet 100.64.0.1/32",
            "inet6 fd7a:115c:a1e0::1/128",
            f"route 100.64.0.0/10 dev {lab.wg_a} proto 109",
            f"route fd7a:115c:a1e0::/48 dev {lab.wg_a} proto 109",
        ]
    assert_dump_agrees(lab.a, lab.wg_a, state)
    first = state.peer(KEY_B.public())
    assert first is not None and first.last_handshake is not None and first.rx_bytes > 0

    # A second pass with nothing changed plans nothing (so makes no WireGuard call).
    assert sync(lab.a, lab.wg_a, cfg_a, router_cfg(1)) == ([], [])

    # A third peer: the first peer's session is untouched.
    time.sleep(1.1)  # a reset would show as a different (or missing) handshake second
    cfg_a3 = DeviceConfig(KEY_A, PORT, (*cfg_a.peers, peer_of(KEY_C, 3, None)))
    wg_plan, rt_plan = sync(lab.a, lab.wg_a, cfg_a3, router_cfg(1))
    assert wg_plan == [f"add peer {KEY_C.public().b64()}: allowed ips 100.64.0.3/32, "
                       "fd7a:115c:a1e0::3/128; keepalive 25"]
    assert rt_plan == []
    with in_netns(lab.a):
        after = UserspaceBackend(lab.wg_a).read()
    kept = after.peer(KEY_B.public())
    assert kept is not None and kept.last_handshake == first.last_handshake
    assert kept.rx_bytes >= first.rx_bytes
    assert_dump_agrees(lab.a, lab.wg_a, after)
    ping(lab.a, "100.64.0.2")

    # Down: the link goes, wireguard-go exits, the socket is gone.
    pid = find_wireguard_go(lab.wg_a)
    assert pid is not None
    with in_netns(lab.a):
        ua = UserspaceBackend(lab.wg_a)
        ua.remove_device()
        assert not ua.exists()
        assert read_router(lab.wg_a).exists is False
    assert find_wireguard_go(lab.wg_a) is None
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"
    assert not Path(f"/var/run/wireguard/{lab.wg_a}.sock").exists()
    assert sh("ping", "-n", "-c", "1", "-W", "1", "100.64.0.2", ns=lab.a, check=False).returncode != 0


def test_auto_falls_back_to_userspace_with_reason(lab: Lab) -> None:
    with in_netns(lab.a):
        backend, why = open_backend(lab.wg_a, "auto")
        if backend.name == "kernel":
            backend.remove_device()
            pytest.skip("this kernel has the WireGuard module; the fallback cannot be shown")
        assert backend.name == "userspace"
        assert why.startswith("userspace: kernel has no WireGuard module (creating link failed: ")
        backend.ensure_device()
        # Once running, auto recognises the wireguard-go device without probing again.
        again, why2 = open_backend(lab.wg_a, "auto")
        assert again.name == "userspace" and why2 == "userspace: wireguard-go already running"
        assert open_backend(lab.wg_a, "userspace")[1] == "userspace: forced by --wg-backend"
        backend.remove_device()


def test_daemon_outlives_the_process_that_started_it(lab: Lab) -> None:
    """Like `meshctl sync` from cron: start, configure, exit; the tunnel device stays."""
    code = (
        "import sys; from meshctl.wg.backend import open_backend;"
        f"b, why = open_backend({lab.wg_b!r}, 'userspace'); b.ensure_device(); print(why)"
    )
    out = subprocess.run(["ip", "netns", "exec", lab.b, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "userspace: forced by --wg-backend"
    pid = find_wireguard_go(lab.wg_b)
    assert pid is not None
    with in_netns(lab.b):
        backend = UserspaceBackend(lab.wg_b)
        assert backend.exists()
        assert backend.read().listen_port > 0
        backend.ensure_device()  # idempotent: same daemon
        assert find_wireguard_go(lab.wg_b) == pid
        backend.remove_device()
    assert find_wireguard_go(lab.wg_b) is None


def test_stale_socket_is_replaced(lab: Lab) -> None:
    path = Path(f"/var/run/wireguard/{lab.wg_a}.sock")
    path.parent.mkdir(parents=True, exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: connect() is refused, like a killed daemon
    dead.close()
    assert path.exists()
    with in_netns(lab.a):
        backend = UserspaceBackend(lab.wg_a)
        assert not backend.exists()
        backend.ensure_device()
        assert backend.exists()
        backend.remove_device()


def test_socket_from_another_namespace_is_refused(lab: Lab) -> None:
    with in_netns(lab.a):
        UserspaceBackend(lab.wg_a).ensure_device()
    with in_netns(lab.b), pytest.raises(MeshctlError, match="not in this network namespace"):
        UserspaceBackend(lab.wg_a).ensure_device()
    with in_netns(lab.a):
        UserspaceBackend(lab.wg_a).remove_device()


def test_remove_device_is_idempotent(lab: Lab) -> None:
    with in_netns(lab.a):
        backend = UserspaceBackend(lab.wg_a)
        backend.remove_device()  # nothing there: no error
        backend.ensure_device()
        backend.remove_device()
        backend.remove_device()
        assert not backend.exists()
        with pytest.raises(MeshctlError, match="no wireguard-go answers"):
            backend.read()


def test_missing_wireguard_go_says_how_to_install(tmp_path: Path) -> None:
    backend = UserspaceBackend("mcmissing0", binary="wireguard-go-not-installed",
                               socket_dir=tmp_path)
    with pytest.raises(MeshctlError) as err:
        backend.ensure_device()
    assert "not found" in err.value.message
    assert err.value.hint is not None and "install wireguard-go" in err.value.hint


def test_unknown_backend_choice_is_a_usage_error() -> None:
    if netns_missing():
        pytest.skip(netns_missing() or "")
    from meshctl.errors import UsageError

    with pytest.raises(UsageError):
        open_backend("mcnone0", "bogus")


def test_removing_a_device_never_stops_another_namespaces_wireguard_go(lab: Lab) -> None:
    """`meshctl down` in one namespace: the socket directory is shared by all of them, and the
    same interface name may run in another. Only this namespace's wireguard-go may stop (the old
    code removed the other's socket, which made it exit)."""
    with in_netns(lab.a):
        UserspaceBackend(lab.wg_a).ensure_device()
    theirs = find_wireguard_go(lab.wg_a)
    assert theirs is not None
    try:
        with in_netns(lab.b):  # no such link here, the same name there
            UserspaceBackend(lab.wg_a).remove_device(owned_pid=theirs)  # even given its pid (device.json)
        time.sleep(0.2)
        assert find_wireguard_go(lab.wg_a) == theirs
        assert Path(f"/var/run/wireguard/{lab.wg_a}.sock").exists()
        with in_netns(lab.a):
            assert UserspaceBackend(lab.wg_a).exists()
            assert UserspaceBackend(lab.wg_a).pid() == theirs
        with in_netns(lab.b):
            assert UserspaceBackend(lab.wg_a).pid() is None  # a status or tuning in b never finds a's
    finally:
        with in_netns(lab.a):
            UserspaceBackend(lab.wg_a).remove_device()
    assert find_wireguard_go(lab.wg_a) is None
