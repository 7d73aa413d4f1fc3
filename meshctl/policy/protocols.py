"""Protocol numbers, port ranges and their text forms: the words a packet filter and the policy
share (pure).

Apart from the policy parser so that the nft renderer (and every sync pass that reads the
table back) need not import the HuJSON parser. The text grammars here raise ValueError with
the reason; the policy parser adds the file position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

MAX_PORT: Final = 65535
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMP: Final = 1
PROTO_ICMPV6: Final = 58
PROTO_SCTP: Final = 132
# Tailscale's default when `proto` is absent (and for "*" or a bare port in a grant's `ip`):
# TCP, UDP and both ICMPs.
DEFAULT_PROTOS: Final = (PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6)
# Only these carry ports; with any other protocol the ports must be "*".
PORT_PROTOS: Final = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP})

# The protocol names Tailscale accepts, in any case (https://tailscale.com/kb/1337/policy-syntax#proto).
PROTO_NAMES: Final[Mapping[str, int]] = {
    "icmp": PROTO_ICMP,
    "icmpv4": PROTO_ICMP,
    "igmp": 2,
    "ipv4": 4,
    "ip-in-ip": 4,
    "tcp": PROTO_TCP,
    "egp": 8,
    "igp": 9,
    "udp": PROTO_UDP,
    "dccp": 33,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": PROTO_ICMPV6,
    "icmpv6": PROTO_ICMPV6,
    "tsmp": 99,
    "sctp": PROTO_SCTP,
}
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class PortRange:
    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        if self.first == 0 and self.last == MAX_PORT:
            return "*"
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


ALL_PORTS: Final = (PortRange(0, MAX_PORT),)


@dataclass(frozen=True, slots=True)
class Capability:
    """What a rule lets through to a destination: protocols, and ports for those that have them.

    With ports other than "*", only TCP, UDP and SCTP packets to those ports match (ICMP echo
    is let through separately, wherever any rule lets the source reach the destination).
    """

    protos: tuple[int, ...]  # sorted IP protocol numbers
    ports: tuple[PortRange, ...]

    def matches(self, proto: int, port: int | None) -> bool:
        if proto not in self.protos:
            return False
        if self.ports == ALL_PORTS:
            return True
        return proto in PORT_PROTOS and port is not None and any(port in r for r in self.ports)

    def __str__(self) -> str:
        ports = ",".join(str(p) for p in self.ports)
        if self.protos == DEFAULT_PROTOS:
            return ports
        return f"{'+'.join(proto_name(p) for p in self.protos)}:{ports}"


ANY_TRAFFIC: Final = Capability(DEFAULT_PROTOS, ALL_PORTS)


def proto_name(proto: int) -> str:
    return next((n for n, v in PROTO_NAMES.items() if v == proto), str(proto))


def parse_proto(text: str) -> int:
    """A protocol name (any case) or number 0-255 -> its number."""
    lower = text.strip().lower()
    if lower in PROTO_NAMES:
        return PROTO_NAMES[lower]
    if lower.isascii() and lower.isdigit() and len(lower) <= 3 and int(lower) <= 255:
        return int(lower)
    raise ValueError(f"unknown protocol {text!r}: use a name such as tcp, udp, icmp or a number 0-255")


def parse_port_range(text: str, allow_zero: bool = True) -> PortRange:
    """"22" or "1000-2000"."""
    first, dash, last = text.partition("-")
    if not _PORT_RE.fullmatch(first) or (dash and not _PORT_RE.fullmatch(last)):
        raise ValueError(f"bad port {text!r}")
    lo, hi = int(first), int(last) if dash else int(first)
    if hi > MAX_PORT or lo > hi:
        raise ValueError(f"bad port range {text!r}")
    if lo == 0 and not allow_zero:
        raise ValueError(f"bad port range {text!r}: ports start at 1 (use '*' for all)")
    return PortRange(lo, hi)


@lru_cache(maxsize=4096)  # policies repeat the same few port lists; the result is immutable
def parse_ports(text: str) -> tuple[PortRange, ...]:
    """An ACL destination's ports: "*", "22", "80,443" or "1000-2000,3000"."""
    if text == "*":
        return ALL_PORTS
    try:
        return tuple(parse_port_range(part.strip()) for part in text.split(","))
    except ValueError as exc:
        raise ValueError(f"{exc}: use '*', 22, 80,443 or 1000-2000") from None


def check_ports_fit(protos: tuple[int, ...], ports: tuple[PortRange, ...]) -> None:
    """Ports other than "*" need a protocol that has ports (or the default set)."""
    if ports != ALL_PORTS and protos != DEFAULT_PROTOS and not set(protos) <= PORT_PROTOS:
        raise ValueError("ports need proto tcp, udp or sctp (other protocols take '*')")


@lru_cache(maxsize=4096)
def parse_ip_capability(text: str) -> Capability:
    """One entry of a grant's `ip`, as Tailscale writes them: "*" (TCP, UDP and ICMP), "443" or
    "8000-8100" (the same protocols on those ports), "tcp:443", "udp:53", "tcp:*", "icmp:*",
    "47:*" (a protocol by number). One port or range per entry, no lists."""
    entry = text.strip().lower()
    if entry == "*":
        return ANY_TRAFFIC
    proto_text, sep, port_text = entry.rpartition(":")
    if not sep:
        proto_text, port_text = "*", entry
    if not proto_text:
        raise ValueError("empty protocol before ':'")
    protos = DEFAULT_PROTOS if proto_text == "*" else (parse_proto(proto_text),)
    if port_text == "*":
        return Capability(protos, ALL_PORTS)
    if "," in port_text:
        raise ValueError("one port or range per entry (write each as its own string)")
    try:
        ports = (parse_port_range(port_text, allow_zero=False),)
    except ValueError as exc:
        raise ValueError(f"{exc}: write '*', 443, 'tcp:443', 'udp:53' or 'tcp:8000-8100'") from None
    check_ports_fit(protos, ports)
    return Capability(protos, ports)


def merge_capabilities(caps: Iterable[Capability]) -> tuple[Capability, ...]:
    """Capabilities with the same protocols joined into one (their ports merged), in the order
    each protocol set first appears: ["tcp:80", "udp:53", "tcp:443"] -> tcp 80,443; udp 53."""
    ports: dict[tuple[int, ...], list[PortRange]] = {}
    for cap in caps:
        ports.setdefault(cap.protos, []).extend(cap.ports)
    return tuple(Capability(protos, _merge_ports(ranges)) for protos, ranges in ports.items())


def _merge_ports(ranges: list[PortRange]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: (r.first, r.last)):
        if merged and r.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, r.last))
        else:
            merged.append(r)
    return tuple(merged)
