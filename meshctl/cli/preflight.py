"""Checks before a command changes the network: the errors a newcomer meets, said plainly.

Each check raises a MeshctlError with one line and a hint (or returns a warning line), so the
command never fails half-way with a kernel errno or a traceback:
- not root (nor CAP_NET_ADMIN) for sync, up, down;
- the interface name belongs to something else (a dummy, another VPN's tun);
- the WireGuard UDP port is taken by another program;
- the system clock is off (expiry and rollback checks depend on it).

`clock_warning` is pure; the others read /proc, netlink or try a bind.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Final

from meshctl.errors import MeshctlError

CAP_NET_ADMIN: Final = 12  # linux/capability.h
# A state is signed for STATE_LIFETIME_S (coord.trust); clocks within a day are "right".
CLOCK_SLACK_S: Final = 86400
KINDS_MESHCTL_USES: Final = ("wireguard", "tun")  # kernel WireGuard, wireguard-go's tun
CLOCK_HINT: Final = "check the system clock (`date -u`; `timedatectl set-ntp true` turns on NTP)"


class NotRootError(MeshctlError):
    """The command changes the network configuration and has no right to."""


def _has_net_admin(status_text: str) -> bool:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def require_root(command: str, hint: str) -> None:
    """Refuse early, before anything is fetched or changed, unless root or CAP_NET_ADMIN."""
    if os.geteuid() == 0:
        return
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            if _has_net_admin(status.read()):
                return
    except OSError:
        pass
    raise NotRootError(f"`meshctl {command}` must run as root: it configures WireGuard, "
                       "addresses, routes and nftables", hint)


def check_interface(ifname: str) -> None:
    """Refuse an interface name that is taken by a link meshctl did not make.

    meshctl's links are kernel WireGuard links and wireguard-go's tun devices (a tun device
    disappears with its wireguard-go, so a tun nobody serves belongs to another program).
    """
    from meshctl.wg.kernel import link_kind

    kind = link_kind(ifname)
    if kind is None or kind == "wireguard":
        return
    if kind == "tun":
        from meshctl.wg.userspace import wireguard_go_here

        if wireguard_go_here(ifname) is not None:
            return
        owner = "a tun device that no wireguard-go serves (another VPN?)"
    else:
        owner = f"a {kind} interface"
    raise MeshctlError(
        f"interface {ifname} already exists and is not meshctl's: it is {owner}",
        f"choose another name with --interface or MESHCTL_INTERFACE, or remove it: ip link del {ifname}",
    )


def _udp_port_taken(family: socket.AddressFamily, port: int) -> bool:
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return False  # no IPv6 here: nothing can hold the port there either
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        sock.close()
    return False


def check_listen_port(ifname: str, port: int) -> None:
    """Before meshctl creates its interface: is the WireGuard UDP port free?

    Once the interface exists, its own WireGuard holds the port, so nothing is checked then.
    """
    from meshctl.wg.kernel import link_kind

    if link_kind(ifname) is not None:
        return
    if _udp_port_taken(socket.AF_INET, port) or _udp_port_taken(socket.AF_INET6, port):
        raise MeshctlError(
            f"UDP port {port} (WireGuard's listen port) is in use by another program",
            f"see who has it: ss -ulpn 'sport = :{port}'; or pick another port with "
            "--listen-port or MESHCTL_LISTEN_PORT",
        )


def format_time(unix: int) -> str:
    from meshctl.coord.records import format_time as records_format_time  # only when there is a warning

    return records_format_time(unix)


def clock_warning(now: int, expires: int | None, fetched_at: int | None, lifetime_s: int) -> str | None:
    """A line saying the clock looks wrong, from what this node saw before; None if it looks right.

    - The node fetched the repository "later" than now: the clock went back.
    - The accepted state was signed after now (expires - lifetime): the clock is behind.
    - The accepted state has expired: the clock may be ahead (or the admin must renew).
    """
    if fetched_at is not None and now < fetched_at - CLOCK_SLACK_S:
        return (f"the system clock reads {format_time(now)}, but this node already fetched the "
                f"repository at {format_time(fetched_at)}: {CLOCK_HINT}")
    if expires is not None and now < expires - lifetime_s - CLOCK_SLACK_S:
        return (f"the system clock reads {format_time(now)}, before the accepted state was "
                f"signed (about {format_time(expires - lifetime_s)}): {CLOCK_HINT}")
    if expires is not None and now >= expires:
        return (f"the accepted state expired at {format_time(expires)} and the system clock "
                f"reads {format_time(now)}: if that is wrong, {CLOCK_HINT}; if it is right, "
                "an admin must run `meshctl admin renew`")
    return None


def clock_check(state_dir: os.PathLike[str] | str, now: int) -> str | None:
    """clock_warning() from what the last sync left in the state directory."""
    from pathlib import Path

    from meshctl.coord.node_state import NodeState
    from meshctl.coord.trust import STATE_LIFETIME_S

    node = NodeState(Path(state_dir))
    try:
        memory = node.load_memory()
    except MeshctlError:
        memory = None
    expires = memory.expires if memory else None
    if memory is not None and expires is None:  # trust.json from before it kept the expiry
        netmap = node.load_netmap()
        expires = netmap.expires if netmap else None
    return clock_warning(now, expires, node.fetched_at(), STATE_LIFETIME_S)


def network_preflight(ifname: str, port: int) -> None:
    """What `sync` and `up` check before touching the network (after require_root)."""
    check_interface(ifname)
    check_listen_port(ifname, port)
