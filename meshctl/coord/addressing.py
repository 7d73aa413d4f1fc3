"""Which mesh addresses a device may be given (pure): one set of rules for `admin approve`, for an
enrolled device choosing its own address, and for nodes judging that choice."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from meshctl.coord.records import Revoked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAGICDNS_IP: Final = ipaddress.IPv4Address("100.100.100.100")
# A revoked device's addresses rest this long before they are handed out again: access rules
# written by IP (and peers' caches) would otherwise carry over to the next device.
QUARANTINE_S: Final = 30 * 86400
MAX_ADDRESS_SEARCH: Final = 1_000_000


def quarantined(revoked: Iterable[Revoked], now: int) -> dict[IPAddress, Revoked]:
    """Addresses of devices revoked less than QUARANTINE_S ago, with the revocation that holds them."""
    return {a: r for r in revoked if r.at + QUARANTINE_S > now for a in r.addresses}


def mesh_ipv6_for(prefix: ipaddress.IPv6Network, v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """The IPv4 address embedded in the ULA /48: stable and unique whenever the IPv4 is."""
    return prefix[int(v4)]


def unusable_reason(mesh: ipaddress.IPv4Network, v4: ipaddress.IPv4Address) -> str | None:
    """Why `v4` is no device's address (outside the mesh, its network or broadcast address,
    MagicDNS's), or None."""
    if v4 not in mesh:
        return f"{v4} is outside the mesh prefix {mesh}"
    if mesh.num_addresses > 2 and v4 in (mesh.network_address, mesh.broadcast_address):
        return f"{v4} is the mesh prefix's {'network' if v4 == mesh.network_address else 'broadcast'} address"
    if v4 == MAGICDNS_IP:
        return f"{v4} is MagicDNS's address"
    return None


def free_ipv4(mesh: ipaddress.IPv4Network, taken: set[IPAddress], within: ipaddress.IPv4Network | None = None,
              start: int = 0) -> ipaddress.IPv4Address | None:
    """The first usable address of `within` (default: the whole mesh prefix) that is not taken,
    looking from offset `start` on and wrapping around; None when there is none."""
    pool = within or mesh
    size = pool.num_addresses
    for i in range(min(size, MAX_ADDRESS_SEARCH)):
        candidate = pool[(start + i) % size]
        if candidate not in taken and unusable_reason(mesh, candidate) is None:
            return candidate
    return None
