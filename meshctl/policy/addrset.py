"""Sets of IP addresses as sorted integer intervals (pure).

A span is (version, first, last) with first/last the addresses as integers. A set is a
tuple of spans, sorted, merged where they touch, so that "is this range inside the set"
is one comparison per span and two sets compare equal exactly when they hold the same
addresses. Building and collapsing `ipaddress` objects for a thousand devices costs
seconds; integers cost milliseconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Span: TypeAlias = tuple[int, int, int]  # (IP version, first, last)
AddrSet: TypeAlias = tuple[Span, ...]  # sorted and merged: see merge()

BITS: Final = {4: 32, 6: 128}
EVERYTHING: Final[AddrSet] = ((4, 0, (1 << 32) - 1), (6, 0, (1 << 128) - 1))


def span_of(item: Prefix | IPAddress) -> Span:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return item.version, int(item.network_address), int(item.broadcast_address)
    return item.version, int(item), int(item)


def merge(spans: Iterable[Span]) -> AddrSet:
    """Any spans -> the set they cover, sorted, touching spans joined."""
    merged: list[list[int]] = []
    for version, lo, hi in sorted(spans):
        if merged and merged[-1][0] == version and lo <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], hi)
        else:
            merged.append([version, lo, hi])
    return tuple((v, lo, hi) for v, lo, hi in merged)


def of(items: Iterable[Prefix | IPAddress]) -> AddrSet:
    return merge(span_of(i) for i in items)


def subtract(spans: AddrSet, removed: AddrSet) -> AddrSet:
    """Addresses of `spans` not in `removed` (both merged); linear in both."""
    out: list[Span] = []
    j = 0
    for version, lo, hi in spans:
        while j < len(removed) and (removed[j][0], removed[j][2]) < (version, lo):
            j += 1  # removed blocks wholly before this span are done with
        k = j
        while lo <= hi and k < len(removed) and removed[k][0] == version and removed[k][1] <= hi:
            _rv, rlo, rhi = removed[k]
            if rlo > lo:
                out.append((version, lo, rlo - 1))
            lo = max(lo, rhi + 1)
            k += 1
        if lo <= hi:
            out.append((version, lo, hi))
    return tuple(out)


def intersect(a: AddrSet, b: AddrSet) -> AddrSet:
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        (av, alo, ahi), (bv, blo, bhi) = a[i], b[j]
        if (av, ahi) < (bv, blo):
            i += 1
            continue
        if (bv, bhi) < (av, alo):
            j += 1
            continue
        out.append((av, max(alo, blo), min(ahi, bhi)))  # same version: they overlap
        if (av, ahi) < (bv, bhi):
            i += 1
        else:
            j += 1
    return tuple(out)


def contains(spans: AddrSet, item: Span) -> bool:
    """Is the whole range `item` inside the set? (Merged spans: it must sit in one.)"""
    version, lo, hi = item
    return any(v == version and first <= lo and hi <= last for v, first, last in spans)


def contains_address(spans: AddrSet, addr: IPAddress) -> bool:
    return contains(spans, span_of(addr))


def prefixes(spans: AddrSet) -> tuple[Prefix, ...]:
    """A (merged) set -> the fewest CIDR prefixes covering exactly it; IPv4 first."""
    out: list[Prefix] = []
    for version, lo, hi in spans:
        bits = BITS[version]
        make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        while lo <= hi:
            size = lo & -lo if lo else 1 << bits  # the largest block aligned at lo
            while size > hi - lo + 1:
                size >>= 1
            out.append(make((lo, bits - size.bit_length() + 1)))
            lo += size
    return tuple(out)


def address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def highest_free(prefix: Prefix, taken: AddrSet, count: int) -> list[IPAddress]:
    """Up to `count` addresses of `prefix` outside `taken`, from the top down (the network
    and broadcast addresses of an IPv4 prefix are never handed out)."""
    version, first, last = span_of(prefix)
    if version == 4 and prefix.prefixlen < 31:
        first, last = first + 1, last - 1
    out: list[IPAddress] = []
    value = last
    blocks = sorted((s for s in taken if s[0] == version), key=lambda s: s[2], reverse=True)
    for _v, lo, hi in blocks:
        while len(out) < count and value > hi and value >= first:
            out.append(address(version, value))
            value -= 1
        if len(out) == count or value < first:
            return out
        if lo <= value:
            value = lo - 1
    while len(out) < count and value >= first:
        out.append(address(version, value))
        value -= 1
    return out
