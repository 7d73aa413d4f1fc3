"""Read and change the mesh interface's addresses, MTU and routes with pyroute2 (shell).

Only the named interface is touched, and among routes only those with proto RTPROT_MESHCTL
through it. `apply_router` runs every operation even if one fails, then reads back and
raises `RouterApplyError` carrying the state it really reached.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

from meshctl.errors import MeshctlError
from meshctl.router.config import (
    RTPROT_MESHCTL,
    AddAddress,
    AddRoute,
    DelAddress,
    DelRoute,
    IPInterface,
    Prefix,
    RouterOp,
    RouterPlan,
    RouterState,
    SetMtu,
    SetUp,
    describe_op,
    is_kernel_managed,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

IFF_UP: Final = 0x1
RT_TABLE_MAIN: Final = 254
# Errors that mean "already done": the goal of the operation holds.
_ADD_DONE: Final = (errno.EEXIST,)
_DEL_DONE: Final = (errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL, errno.ENODEV)


def interface_addresses(exclude_ifname: str, family: int = 0) -> list[IPInterface]:
    """The host's addresses with their prefixes (one family, or both), but loopback, link-local
    and those of `exclude_ifname` (the mesh interface)."""
    from meshctl.netlink import IPRoute

    out: list[IPInterface] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr(family=family) if family else ipr.get_addr():
            if names.get(msg["index"]) == exclude_ifname:
                continue
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text is None:
                continue
            iface = ipaddress.ip_interface(f"{text}/{msg['prefixlen']}")
            if not (iface.ip.is_loopback or iface.ip.is_link_local):
                out.append(iface)
    return out


class RouterApplyError(MeshctlError):
    """Some operations failed; `state` is what the interface looks like now."""

    def __init__(self, message: str, state: RouterState, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.state = state


def _index(ipr: Any, ifname: str) -> int | None:
    idx = ipr.link_lookup(ifname=ifname)
    return int(idx[0]) if idx else None


def read_router(ifname: str) -> RouterState:
    """The interface's state in the current network namespace."""
    from meshctl.netlink import IPRoute

    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return RouterState(exists=False)
        (link,) = ipr.get_links(idx)
        addrs: list[IPInterface] = []
        for msg in ipr.get_addr(index=idx):
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            iface = ipaddress.ip_interface(f"{text}/{msg['prefixlen']}")
            if not is_kernel_managed(iface):
                addrs.append(iface)
        routes: list[Prefix] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if msg["proto"] != RTPROT_MESHCTL or msg.get_attr("RTA_OIF") != idx:
                    continue
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                routes.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
        return RouterState(
            exists=True,
            up=bool(link["flags"] & IFF_UP),
            mtu=int(link.get_attr("IFLA_MTU") or 0),
            addresses=tuple(addrs),
            routes=tuple(routes),
        )


def _run(ipr: Any, idx: int, op: RouterOp) -> None:
    match op:
        case SetMtu(mtu):
            ipr.link("set", index=idx, mtu=mtu)
        case SetUp():
            ipr.link("set", index=idx, state="up")
        case AddAddress(a):
            ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        case DelAddress(a):
            ipr.addr("del", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
        case AddRoute(p):
            ipr.route("add", dst=str(p), oif=idx, proto=RTPROT_MESHCTL, table=RT_TABLE_MAIN)
        case DelRoute(p):
            ipr.route("del", dst=str(p), oif=idx, proto=RTPROT_MESHCTL, table=RT_TABLE_MAIN)


def run_ops(ops: Sequence[T], run: Callable[[T], None], describe: Callable[[T], str],
            deletes: Callable[[T], bool]) -> list[str]:
    """Run every netlink operation, one failing not stopping the others; the failures, as lines.
    An add that finds its object there, or a delete that finds it gone, reached its goal."""
    from meshctl.netlink import NetlinkError

    failures: list[str] = []
    for op in ops:
        try:
            run(op)
            log.info("%s", describe(op))
        except NetlinkError as exc:
            if exc.code not in (_DEL_DONE if deletes(op) else _ADD_DONE):
                failures.append(f"{describe(op)}: {exc.args[-1] if exc.args else exc}")
    return failures


def apply_router(ifname: str, plan: RouterPlan) -> RouterState:
    """Run `plan` on `ifname`; returns the state read back afterwards."""
    if plan.is_empty():
        return read_router(ifname)
    from meshctl.netlink import IPRoute

    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            raise RouterApplyError(
                f"interface {ifname} does not exist", RouterState(exists=False),
                hint="the WireGuard device must be created before addresses and routes",
            )
        failures = run_ops(plan.ops, lambda op: _run(ipr, idx, op), lambda op: describe_op(op, ifname),
                           lambda op: isinstance(op, DelRoute | DelAddress))
    state = read_router(ifname)
    if failures:
        raise RouterApplyError(
            f"{len(failures)} of {len(plan.ops)} changes on {ifname} failed: "
            + "; ".join(failures),
            state,
        )
    return state


def remove_router(ifname: str) -> RouterState:
    """Remove every address and meshctl route from `ifname` (for `meshctl down`)."""
    from meshctl.router.config import plan_router

    return apply_router(ifname, plan_router(read_router(ifname), None))
