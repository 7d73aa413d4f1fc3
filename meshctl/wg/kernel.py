"""Kernel WireGuard through netlink (pyroute2): rtnetlink for the link, genetlink for config.

Same public API as the userspace backend. Updates are split into page-sized messages by
`meshctl.wg.chunks` (like wireguard-tools); a dump that spreads one peer's allowed IPs over
several messages is merged back by public key.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from meshctl.errors import MeshctlError
from meshctl.keys import NodePrivate, NodePublic
from meshctl.wg.config import (
    DeviceState,
    DeviceUpdate,
    PeerState,
    Prefix,
    format_endpoint,
    parse_endpoint,
)

if TYPE_CHECKING:  # wg.chunks only when the kernel device is written: link_kind is on every pass's path
    from meshctl.wg.chunks import DeviceMessage

log = logging.getLogger(__name__)

WG_GENL_VERSION: Final = 1
WG_CMD_SET_DEVICE: Final = 1
NO_MODULE_HINT: Final = "load the wireguard kernel module, or use --wg-backend userspace"


def _netlink_error_text(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return f"{os.strerror(code)} (errno {code})"
    return str(exc) or type(exc).__name__


def link_present(ifname: str) -> bool:
    """Whether a link named `ifname` exists in this namespace (one ioctl: no netlink library)."""
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def link_kind(ifname: str) -> str | None:
    """The kind of the link `ifname` in this namespace ("wireguard", "tun", ...) or None."""
    from meshctl.netlink import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return None
        (link,) = ipr.get_links(idx[0])
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind) if kind else "unknown"


def try_create_kernel_link(ifname: str) -> str | None:
    """Create a kernel WireGuard link; None on success, else why it failed."""
    from meshctl.netlink import IPRoute, NetlinkError

    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=ifname, kind="wireguard")
    except NetlinkError as exc:
        if exc.code == errno.EEXIST and link_kind(ifname) == "wireguard":
            return None
        return _netlink_error_text(exc)
    return None


def encode_message(ifname: str, msg: DeviceMessage) -> Any:
    """The pyroute2 `wgmsg` for one chunk (also used by tests to check real sizes)."""
    from meshctl.netlink import wgmsg

    out = wgmsg()
    out["cmd"] = WG_CMD_SET_DEVICE
    out["version"] = WG_GENL_VERSION
    out["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
    if msg.private_key is not None:
        out["attrs"].append(
            ["WGDEVICE_A_PRIVATE_KEY", base64.b64encode(msg.private_key.private_bytes_for_device())]
        )
    if msg.listen_port is not None:
        out["attrs"].append(["WGDEVICE_A_LISTEN_PORT", msg.listen_port])
    peers = []
    for entry in msg.peers:
        attrs: list[list[Any]] = [
            ["WGPEER_A_PUBLIC_KEY", base64.b64encode(entry.public_key.raw)],
            ["WGPEER_A_FLAGS", entry.flags],
        ]
        if entry.endpoint is not None:
            addr, port = parse_endpoint(entry.endpoint)
            attrs.append(["WGPEER_A_ENDPOINT", {"addr": str(addr), "port": port}])
        if entry.persistent_keepalive is not None:
            attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", entry.persistent_keepalive])
        if entry.allowed_ips:
            ips = []
            for ip in entry.allowed_ips:
                family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
                ips.append({"attrs": [
                    ["WGALLOWEDIP_A_FAMILY", family],
                    ["WGALLOWEDIP_A_IPADDR", ip.network_address.packed],
                    ["WGALLOWEDIP_A_CIDR_MASK", ip.prefixlen],
                ]})
            attrs.append(["WGPEER_A_ALLOWEDIPS", ips])
        peers.append({"attrs": attrs})
    if peers:
        out["attrs"].append(["WGDEVICE_A_PEERS", peers])
    return out


def _raw_key(value: Any) -> bytes:
    # pyroute2 decodes keys to {"key": raw, "value": base64}; accept either form.
    if isinstance(value, dict):
        raw = value.get("key")
        if isinstance(raw, bytes):
            return raw
        value = value.get("value")
    return base64.b64decode(value)


def _prefix(item: Any) -> Prefix | None:
    text = item.get("addr") if hasattr(item, "get") else None
    return ipaddress.ip_network(text, strict=False) if text else None


def state_from_messages(messages: Iterable[Any]) -> DeviceState:
    """Merge a WG_CMD_GET_DEVICE dump (one peer may span several messages) into a state."""
    private_key: NodePrivate | None = None
    listen_port = 0
    order: list[bytes] = []
    peers: dict[bytes, dict[str, Any]] = {}
    for msg in messages:
        key = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if key is not None and any(_raw_key(key)):
            private_key = NodePrivate(_raw_key(key))
        port = msg.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = int(port)
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            raw = _raw_key(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            if raw not in peers:
                order.append(raw)
                peers[raw] = {"ips": []}
            slot = peers[raw]
            endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
            if endpoint is not None and endpoint.get("addr"):
                slot["endpoint"] = format_endpoint(
                    ipaddress.ip_address(endpoint["addr"]), int(endpoint["port"])
                )
            for name, field in (
                ("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", "keepalive"),
                ("WGPEER_A_RX_BYTES", "rx"),
                ("WGPEER_A_TX_BYTES", "tx"),
            ):
                value = peer.get_attr(name)
                if value is not None:
                    slot[field] = int(value)
            handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if handshake is not None:
                slot["handshake"] = int(handshake["tv_sec"]) or None
            for item in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                prefix = _prefix(item)
                if prefix is not None:
                    slot["ips"].append(prefix)
    return DeviceState(
        private_key=private_key,
        listen_port=listen_port,
        peers=tuple(
            PeerState(
                public_key=NodePublic(raw),
                endpoint=peers[raw].get("endpoint"),
                allowed_ips=tuple(peers[raw]["ips"]),
                persistent_keepalive=peers[raw].get("keepalive", 0),
                last_handshake=peers[raw].get("handshake"),
                rx_bytes=peers[raw].get("rx", 0),
                tx_bytes=peers[raw].get("tx", 0),
            )
            for raw in order
        ),
    )


class KernelBackend:
    """The kernel module, configured over generic netlink."""

    name = "kernel"

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname

    def exists(self) -> bool:
        return link_kind(self.ifname) == "wireguard"

    def ensure_device(self) -> None:
        kind = link_kind(self.ifname)
        if kind == "wireguard":
            return
        if kind is not None:
            raise MeshctlError(
                f"{self.ifname} exists but is a {kind} link, not kernel WireGuard",
                hint=f"delete it (ip link del {self.ifname}) or use --wg-backend userspace",
            )
        error = try_create_kernel_link(self.ifname)
        if error is not None:
            raise MeshctlError(
                f"cannot create kernel WireGuard link {self.ifname}: {error}", hint=NO_MODULE_HINT
            )

    def read(self) -> DeviceState:
        from meshctl.netlink import NetlinkError, WireGuard

        try:
            with WireGuard() as wg:
                messages = list(wg.info(self.ifname))
        except NetlinkError as exc:
            raise MeshctlError(
                f"cannot read WireGuard device {self.ifname}: {_netlink_error_text(exc)}",
                hint=NO_MODULE_HINT if exc.code == errno.ENOENT else None,
            ) from None
        return state_from_messages(messages)

    def apply(self, update: DeviceUpdate) -> None:
        if update.is_empty():
            return
        from meshctl.netlink import NLM_F_ACK, NLM_F_REQUEST, NetlinkError, WireGuard
        from meshctl.wg.chunks import split_update

        messages = split_update(update, self.ifname)
        try:
            with WireGuard() as wg:
                for i, chunk in enumerate(messages):
                    msg = encode_message(self.ifname, chunk)
                    wg.nlm_request(msg, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
                    log.debug("%s: sent WireGuard set message %d/%d", self.ifname, i + 1,
                              len(messages))
        except NetlinkError as exc:
            # Never include the message: it may hold the private key.
            raise MeshctlError(
                f"kernel refused the WireGuard configuration for {self.ifname}: "
                f"{_netlink_error_text(exc)}"
            ) from None

    def tune_sockets(self, listen_port: int) -> None:
        """Nothing to do: the kernel sizes its own sockets."""

    def pid(self) -> int | None:
        return None

    def remove_device(self, owned_pid: int | None = None) -> None:
        from meshctl.netlink import IPRoute, NetlinkError

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)
            if not idx:
                return
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise MeshctlError(
                        f"cannot delete {self.ifname}: {_netlink_error_text(exc)}"
                    ) from None
