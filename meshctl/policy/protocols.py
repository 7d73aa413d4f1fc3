"""Protocol numbers and port ranges: the words a packet filter and the policy share (pure).

Apart from the policy parser so that the nft renderer (and every sync pass that reads the
table back) need not import the HuJSON parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_PORT: Final = 65535
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMP: Final = 1
PROTO_ICMPV6: Final = 58
PROTO_SCTP: Final = 132
# Tailscale's default when `proto` is absent: TCP, UDP and both ICMPs.
DEFAULT_PROTOS: Final = (PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6)
# Only these carry ports; with any other protocol the ports must be "*".
PORT_PROTOS: Final = frozenset({PROTO_TCP, PROTO_UDP, PROTO_SCTP})


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
