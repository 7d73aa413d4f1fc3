"""Configuration text for the two peers bench/peers.py runs next to meshctl (pure).

Nebula 1.6 (Debian's `nebula`) and tinc 1.0 (Debian's `tinc`), set up the way their manuals
describe for two devices behind NATs: a Nebula lighthouse that is also a relay, a tinc hub that
both devices connect to. Everything a comparison must hold equal is a constant here: the tunnel
MTU and the UDP socket buffers. Nothing in this module touches the disk or the network; the
bench writes the returned text.

Nebula reads YAML, and YAML is a superset of JSON, so its configuration is written as JSON.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

# The same for every system (issue 22): meshctl's default MTU (meshctl/router/config.py).
TUNNEL_MTU: Final = 1420
# Asked of the kernel for each daemon's UDP socket; Linux doubles what is asked, so every socket
# ends up with 16 MiB, as meshctl's wireguard-go does (meshctl/udp/sockets.py BUFFER_BYTES).
SOCKET_BUFFER_BYTES: Final = 8 * 1024 * 1024
NEBULA_PORT: Final = 4242
TINC_PORT: Final = 655
NEBULA_NET: Final = ipaddress.IPv4Network("10.42.0.0/24")
TINC_NET: Final = ipaddress.IPv4Network("10.43.0.0/24")
TINC_NETNAME: Final = "peersbench"
# tinc 1.0 keeps a NAT mapping open only with its pings and MTU probes, every PingInterval (60 s by
# default). The lab's NATs forget an idle UDP mapping after 30 s (DESIGN.md), and with the default
# tinc's direct path was seen dead after 40 s idle (pings lost, tinc still sending to it). 25 s is
# what meshctl and WireGuard use for the same reason.
TINC_PING_INTERVAL_S: Final = 25
BLOCK_TABLE: Final = "peers_block"

_TINC_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def _check_ifname(name: str) -> str:
    if not _IFNAME.fullmatch(name):
        raise ValueError(f"bad interface name {name!r}")
    return name


def _check_ip(text: str) -> str:
    return str(ipaddress.IPv4Address(text))


@dataclass(frozen=True, slots=True)
class Overlay:
    """One device of a peer system: its name, tunnel address and tunnel interface."""

    name: str
    tunnel_ip: str
    ifname: str

    def __post_init__(self) -> None:
        if not _TINC_NAME.fullmatch(self.name):  # tinc allows only these; Nebula is fine with them
            raise ValueError(f"bad node name {self.name!r}: letters, digits and _ only")
        _check_ip(self.tunnel_ip)
        _check_ifname(self.ifname)


# --- Nebula ---------------------------------------------------------------------------------------


def nebula_config(node: Overlay, *, pki_dir: str, lighthouse: Overlay, lighthouse_public: str,
                  use_relay: bool, port: int = NEBULA_PORT) -> dict[str, Any]:
    """Nebula's configuration for `node`; the lighthouse itself when `node` is `lighthouse`.

    The lighthouse is always a relay (`relay.am_relay`). With `use_relay` the devices name it as
    theirs, so Nebula falls back to it when no direct path forms. Nebula 1.6.1 (relays are
    experimental there) keeps a relayed tunnel once the relay's handshake wins, which it does
    behind two home NATs (seen: every byte through the lighthouse for over 60 s), so the bench's
    direct-path sessions run the devices without it. Punching is on with `respond` (what Nebula's
    example config recommends behind NATs); `punchy.delay` keeps its default (1 s).
    """
    _check_ip(lighthouse_public)
    is_lighthouse = node == lighthouse
    if is_lighthouse:
        relay: dict[str, Any] = {"am_relay": True, "use_relays": False}
    elif use_relay:
        relay = {"am_relay": False, "use_relays": True, "relays": [lighthouse.tunnel_ip]}
    else:
        relay = {"am_relay": False, "use_relays": False}
    return {
        "pki": {"ca": f"{pki_dir}/ca.crt", "cert": f"{pki_dir}/{node.name}.crt",
                "key": f"{pki_dir}/{node.name}.key"},
        "static_host_map": {lighthouse.tunnel_ip: [f"{lighthouse_public}:{port}"]},
        "lighthouse": {"am_lighthouse": is_lighthouse,
                       "hosts": [] if is_lighthouse else [lighthouse.tunnel_ip]},
        "listen": {"host": "0.0.0.0", "port": port,
                   "read_buffer": SOCKET_BUFFER_BYTES, "write_buffer": SOCKET_BUFFER_BYTES},
        "punchy": {"punch": True, "respond": True},
        "relay": relay,
        "tun": {"disabled": False, "dev": node.ifname, "mtu": TUNNEL_MTU},
        "logging": {"level": "info", "format": "text"},
        "firewall": {
            "outbound": [{"port": "any", "proto": "any", "host": "any"}],
            "inbound": [{"port": "any", "proto": "any", "host": "any"}],
        },
    }


def nebula_config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def nebula_cert_sign_args(node: Overlay, pki_dir: str, prefix_len: int = NEBULA_NET.prefixlen) -> list[str]:
    """`nebula-cert sign ...` for `node`, signed by the CA in `pki_dir`."""
    return ["sign", "-name", node.name, "-ip", f"{node.tunnel_ip}/{prefix_len}",
            "-ca-crt", f"{pki_dir}/ca.crt", "-ca-key", f"{pki_dir}/ca.key",
            "-out-crt", f"{pki_dir}/{node.name}.crt", "-out-key", f"{pki_dir}/{node.name}.key"]


# --- tinc 1.0 -------------------------------------------------------------------------------------


def tinc_conf(node: Overlay, connect_to: Sequence[str], port: int = TINC_PORT) -> str:
    """tinc.conf: router mode (the default) on a TUN device named `node.ifname`, IPv4 only.

    The UDP buffers are not set here: tinc 1.0 asks with plain SO_RCVBUF, which the kernel caps
    at net.core.rmem_max; the bench sets them on tincd's socket from outside instead (as meshctl
    does for wireguard-go), so all three systems end up equal.
    """
    for peer in connect_to:
        if not _TINC_NAME.fullmatch(peer):
            raise ValueError(f"bad tinc node name {peer!r}")
    lines = [f"Name = {node.name}", f"Interface = {node.ifname}", "Mode = router",
             "AddressFamily = ipv4", f"Port = {port}", f"PingInterval = {TINC_PING_INTERVAL_S}"]
    lines += [f"ConnectTo = {peer}" for peer in connect_to]
    return "\n".join(lines) + "\n"


def tinc_host(node: Overlay, public_ip: str | None = None, port: int = TINC_PORT) -> str:
    """hosts/NAME without its key (`tincd -K` appends the public key): the subnet the node owns
    and, for the hub only, where to reach it."""
    lines = []
    if public_ip is not None:
        lines.append(f"Address = {_check_ip(public_ip)} {port}")
    lines += [f"Subnet = {node.tunnel_ip}/32", f"Port = {port}"]
    return "\n".join(lines) + "\n"


def tinc_up(node: Overlay, prefix_len: int = TINC_NET.prefixlen) -> str:
    """tinc-up: the tunnel address and the common MTU ($INTERFACE is set by tincd)."""
    return ("#!/bin/sh\n"
            f"ip addr add {node.tunnel_ip}/{prefix_len} dev \"$INTERFACE\"\n"
            f"ip link set \"$INTERFACE\" mtu {TUNNEL_MTU} up\n")


def tincd_args(config_dir: str, pidfile: str) -> list[str]:
    """tincd in the foreground (so the bench owns the process) with its own pid file: every
    namespace shares /var/run, where the default pid file of a network name would collide."""
    return ["tincd", "-D", "-n", TINC_NETNAME, "-c", config_dir, f"--pidfile={pidfile}"]


# --- the lab ------------------------------------------------------------------------------------


def block_between_ruleset(first: str, second: str) -> str:
    """nft script for the internet router: drop everything between two public addresses, so
    the devices behind them can meet only through a relay (lighthouse, hub)."""
    one, two = _check_ip(first), _check_ip(second)
    return (f"table ip {BLOCK_TABLE} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 10;\n"
            f"    ip saddr {one} ip daddr {two} drop\n"
            f"    ip saddr {two} ip daddr {one} drop\n"
            "  }\n"
            "}\n")


def overlay_ip(net: ipaddress.IPv4Network, index: int) -> str:
    """The `index`-th tunnel address of a system's network (1 is the lighthouse or hub)."""
    if not 0 < index < net.num_addresses - 1:
        raise ValueError(f"no address {index} in {net}")
    return str(net[index])
