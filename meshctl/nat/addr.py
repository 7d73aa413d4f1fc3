"""AddrPort, the (IP, port) value every NAT-traversal module speaks (pure)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple, TypeAlias

from meshctl.errors import ParseError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PORT = 65535


class AddrPort(NamedTuple):
    """An IP address and a UDP port; prints as `1.2.3.4:5` or `[::1]:5`."""

    ip: IPAddress
    port: int

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    def sockaddr(self) -> tuple[str, int]:
        """The tuple form the socket module takes (IPv4 sockets)."""
        return (str(self.ip), self.port)


def addr_port(ip: str | IPAddress, port: int) -> AddrPort:
    """Build an AddrPort from text or an address object, checking the port range."""
    if not 0 <= port <= MAX_PORT:
        raise ParseError(f"port out of range: {port}")
    return AddrPort(ipaddress.ip_address(ip), port)


def parse_addr_port(text: str) -> AddrPort:
    """Parse a literal `IP:PORT` or `[IPv6]:PORT` (no host names; see split_host_port)."""
    host, port = split_host_port(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ParseError(f"Unable to parse endpoint: `{text}` (not an IP address)") from None
    return AddrPort(ip, port)


def split_host_port(text: str) -> tuple[str, int]:
    """Split `host:port` / `[v6]:port` into its parts, quoting the input on failure."""
    bad = ParseError(f"Unable to parse endpoint: `{text}` (expected HOST:PORT)")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise bad
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise bad
    if not host or not port_text.isdigit() or len(port_text) > 5:
        raise bad
    port = int(port_text)
    if not 0 < port <= MAX_PORT:
        raise bad
    return host, port
