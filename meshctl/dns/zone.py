"""NetMap -> Zone: the names MagicDNS answers for (pure).

The zone holds `<name>.<domain>` -> the member's mesh addresses and the reverse
map for those addresses. Names are lowercased; a peer whose name is not a valid
DNS label (or collides with another after lowercasing) is left out and listed in
`Zone.skipped`, so one odd record cannot take the whole resolver down.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from meshctl.coord.netmap import IPAddress, NetMap
from meshctl.errors import ParseError

MAGIC_ADDRESS: Final = "100.100.100.100"  # the well-known MagicDNS address, as in Tailscale
MAX_REVERSE_ROUTING_DOMAINS: Final = 64  # 100.64.0.0/10 needs exactly 64 in-addr.arpa zones
DEFAULT_TTL_S: Final = 60  # short: renames and revocations should reach clients quickly
MAX_LABEL_LEN: Final = 63  # RFC 1035 2.3.4
MAX_NAME_LEN: Final = 253  # presentation form without the trailing dot
_LABEL_RE: Final = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")  # \Z: `$` allows "name\n"
# Octet / nibble boundaries: a reverse zone apex must sit on one of them.
_V4_STEP: Final = 8
_V6_STEP: Final = 4


class ZoneError(ParseError):
    """The mesh domain itself is not a usable DNS name."""


def is_valid_label(label: str) -> bool:
    """A lowercase LDH label (RFC 952/1123 host name rules)."""
    return len(label) <= MAX_LABEL_LEN and _LABEL_RE.match(label) is not None


def normalize_domain(domain: str) -> str:
    """Lowercase, no trailing dot; raise ZoneError when it is not a host name."""
    name = domain.strip().lower().rstrip(".")
    if not name or len(name) > MAX_NAME_LEN:
        raise ZoneError(f"invalid mesh DNS domain: `{domain}`")
    if not all(is_valid_label(label) for label in name.split(".")):
        raise ZoneError(f"invalid mesh DNS domain: `{domain}`")
    return name


def reverse_name(addr: IPAddress) -> str:
    """`100.64.0.1` -> `1.0.64.100.in-addr.arpa` (no trailing dot, lowercase)."""
    return addr.reverse_pointer.lower()


def reverse_apex(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The reverse zone that contains the whole prefix, on an octet/nibble boundary."""
    step = _V4_STEP if prefix.version == 4 else _V6_STEP
    bits = prefix.prefixlen - prefix.prefixlen % step
    # reverse_pointer of the network address, keeping only the leading `bits`.
    labels = prefix.network_address.reverse_pointer.split(".")
    suffix = 2  # "in-addr.arpa" / "ip6.arpa"
    keep = bits // step
    return ".".join(labels[len(labels) - suffix - keep :]).lower()


def reverse_routing_domains(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, limit: int) -> tuple[str, ...]:
    """The reverse zones exactly covering `prefix` (for split-DNS routing), at most `limit`.

    100.64.0.0/10 -> 64.100.in-addr.arpa ... 127.100.in-addr.arpa. Returns () when more
    than `limit` zones would be needed.
    """
    step = _V4_STEP if prefix.version == 4 else _V6_STEP
    bits = -(-prefix.prefixlen // step) * step  # round up to the boundary
    count = 1 << (bits - prefix.prefixlen)
    if count > limit:
        return ()
    out = []
    for sub in prefix.subnets(new_prefix=bits) if bits > prefix.prefixlen else [prefix]:
        out.append(reverse_apex(sub))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class Zone:
    """What the resolver answers. Build it with `zone_from_netmap`."""

    domain: str  # "example.mesh": lowercase, no trailing dot
    ipv4_cidr: ipaddress.IPv4Network
    ipv6_prefix: ipaddress.IPv6Network
    hosts: tuple[tuple[str, tuple[IPAddress, ...]], ...]  # (label, addresses), sorted
    serial: int = 1
    ttl: int = DEFAULT_TTL_S
    skipped: tuple[str, ...] = ()  # peer names left out (invalid or colliding)
    own: tuple[IPAddress, ...] = ()  # this node's own mesh addresses and MAGIC_ADDRESS: "the node itself"
    _by_label: dict[str, tuple[IPAddress, ...]] = field(default_factory=dict, compare=False, repr=False)
    _by_reverse: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # Packed replies memoized by the resolver: a pure function of (zone, question), so
    # they live and die with the zone; a new zone starts empty.
    reply_cache: dict[tuple[object, ...], tuple[bytes, int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_label.update(self.hosts)
        for label, addrs in self.hosts:
            for addr in addrs:
                if self.is_mesh_address(addr):
                    self._by_reverse.setdefault(reverse_name(addr), self.fqdn(label))

    def fqdn(self, label: str) -> str:
        return f"{label}.{self.domain}"

    def addresses(self, label: str) -> tuple[IPAddress, ...] | None:
        """The addresses of `label` (lowercase), or None when no such member."""
        return self._by_label.get(label)

    def ptr(self, reverse: str) -> str | None:
        """The fqdn for a reverse name (`1.0.64.100.in-addr.arpa`), or None."""
        return self._by_reverse.get(reverse)

    def is_mesh_address(self, addr: IPAddress) -> bool:
        if addr.version == 4:
            return addr in self.ipv4_cidr
        return addr in self.ipv6_prefix

    def is_own_address(self, addr: IPAddress) -> bool:
        return addr in self.own

    @property
    def soa(self) -> Soa:
        return Soa(
            mname=self.domain,
            rname=f"hostmaster.{self.domain}",
            serial=self.serial % (1 << 32),
            refresh=self.ttl,
            retry=self.ttl,
            expire=self.ttl * 10,
            minimum=self.ttl,  # negative-caching TTL (RFC 2308)
        )

    @property
    def reverse_apexes(self) -> tuple[str, str]:
        return reverse_apex(self.ipv4_cidr), reverse_apex(self.ipv6_prefix)

    def reverse_routing_domains(self) -> tuple[str, ...]:
        """The in-addr.arpa / ip6.arpa zones to route to MagicDNS under split DNS."""
        return reverse_routing_domains(self.ipv4_cidr, MAX_REVERSE_ROUTING_DOMAINS) + reverse_routing_domains(
            self.ipv6_prefix, MAX_REVERSE_ROUTING_DOMAINS
        )


def zone_from_netmap(netmap: NetMap, ttl: int = DEFAULT_TTL_S) -> Zone:
    """Every member's name and mesh addresses; raises ZoneError for an invalid domain."""
    domain = normalize_domain(netmap.network.domain)
    hosts: dict[str, tuple[IPAddress, ...]] = {}
    skipped: list[str] = []
    for peer in sorted(netmap.peers, key=lambda p: p.name):
        label = peer.name.lower()
        if not is_valid_label(label) or label in hosts:
            skipped.append(peer.name)
            continue
        hosts[label] = tuple(peer.addresses)
    me = netmap.self_peer
    return Zone(
        domain=domain,
        ipv4_cidr=netmap.network.ipv4_cidr,
        ipv6_prefix=netmap.network.ipv6_prefix,
        hosts=tuple(sorted(hosts.items())),
        serial=netmap.serial,
        ttl=ttl,
        skipped=tuple(skipped),
        own=(*(me.addresses if me else ()), ipaddress.IPv4Address(MAGIC_ADDRESS)),
    )


def listen_addresses(netmap: NetMap) -> tuple[str, ...]:
    """Where the agent's MagicDNS listens: 100.100.100.100 and this node's mesh addresses."""
    own = netmap.self_peer
    return (MAGIC_ADDRESS, *(str(a) for a in (own.addresses if own else ())))
