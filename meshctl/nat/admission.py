"""Which disco and STUN packets on WireGuard's port get read at all (pure; `now` passed in).

Everything that arrives on the shared port costs the agent a Python round trip, and a disco
packet naming a member's (public) disco key costs a decryption on top. So before anything is
parsed or unsealed, each packet's source (IP address and port, read straight from the packet's
header: `source_key`) must be admitted:

- every source has its own token bucket (PER_SOURCE_RATE, PER_SOURCE_BURST; a bounded
  table): a real peer sends a few disco packets a second at most, a flood from one address
  is cut to that at once;
- a source this node has not sent to within EXPECT_FOR_S (a peer's candidate we ping, a
  STUN server we ask: `expect()` on every disco or STUN packet sent) also draws from one
  shared bucket for all such strangers (STRANGER_RATE), so a flood from forged, ever new
  sources costs at most that many unsealings a second. Peers we talk to keep their own
  budget whatever strangers do.

A refusal is silent: nothing is sent back, so a refused packet cannot be reflected either.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, TypeAlias

from meshctl.nat.addr import AddrPort
from meshctl.ratelimit import BucketTable, TokenBucket

# The sender as the packet says: its IP address (4 or 16 bytes, network order) and port (2 bytes).
SourceKey: TypeAlias = bytes

# Disco: pings every 1 s per candidate while probing, bursts of a few per candidate when a
# recovery round opens, a heartbeat every 3 s once direct. 10/s with a burst of 40 is far above
# that and far below what costs CPU.
PER_SOURCE_RATE: Final = 10.0
PER_SOURCE_BURST: Final = 40.0
STRANGER_RATE: Final = 100.0
STRANGER_BURST: Final = 200.0
MAX_SOURCES: Final = 4096
# Longer than a recovery round (paths.RECOVERY_ROUND_S, 36 s): the peer's packets in its
# round answer ours of the round before.
EXPECT_FOR_S: Final = 90.0
MAX_EXPECTED: Final = 4096
IPV4_HEADER_MIN: Final = 20
UDP_HEADER_LEN: Final = 8


def key_of(addr: AddrPort) -> SourceKey:
    return addr.ip.packed + addr.port.to_bytes(2, "big")


def source_key(packet: bytes | memoryview) -> SourceKey | None:
    """The source of a raw IPv4/UDP packet (what a raw socket delivers), without parsing it
    (from a view into a receive buffer too: nothing of a refused packet is ever copied)."""
    if len(packet) < IPV4_HEADER_MIN:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_HEADER_MIN or len(packet) < ihl + UDP_HEADER_LEN:
        return None
    return bytes(packet[12:16]) + bytes(packet[ihl : ihl + 2])


@dataclass(frozen=True, slots=True)
class Limits:
    per_source_rate: float = PER_SOURCE_RATE
    per_source_burst: float = PER_SOURCE_BURST
    stranger_rate: float = STRANGER_RATE
    stranger_burst: float = STRANGER_BURST
    max_sources: int = MAX_SOURCES
    expect_for_s: float = EXPECT_FOR_S
    max_expected: int = MAX_EXPECTED


@dataclass(slots=True)
class Counts:
    admitted: int = 0
    refused_source: int = 0  # past its own bucket
    refused_stranger: int = 0  # a stranger past the strangers' shared bucket


class Admission:
    """Admit or refuse each packet by its source, before any parsing or cryptography."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._sources: BucketTable[SourceKey] = BucketTable(limits.per_source_rate, limits.per_source_burst,
                                                            limits.max_sources)
        self._strangers = TokenBucket.full(limits.stranger_rate, limits.stranger_burst, 0.0)
        self._expected: OrderedDict[SourceKey, float] = OrderedDict()  # key -> until
        # The source refused last, and until when: a flood from one address is refused in one
        # comparison a packet (its bucket has no token before then anyway, or a fraction of one).
        self._hot: tuple[SourceKey, float] = (b"", 0.0)
        self.counts = Counts()

    def expect(self, dst: AddrPort, now: float) -> None:
        """We sent a disco or STUN packet to `dst`: what comes back from it is not a stranger's."""
        key = key_of(dst)
        self._expected.pop(key, None)
        if len(self._expected) >= self.limits.max_expected:
            self._expected.popitem(last=False)
        self._expected[key] = now + self.limits.expect_for_s

    def is_expected(self, key: SourceKey, now: float) -> bool:
        until = self._expected.get(key)
        return until is not None and now < until

    def admit(self, key: SourceKey | None, now: float) -> bool:
        if key is None:
            return False
        hot_key, hot_until = self._hot
        if key == hot_key and now < hot_until:
            self.counts.refused_source += 1
            return False
        stranger = not self.is_expected(key, now)
        # The strangers' bucket first: under a flood from ever new (forged) sources it is empty,
        # and the packet goes without a new entry in the table for each.
        if stranger and not self._strangers.take(1.0, now):
            self.counts.refused_stranger += 1
            return False
        if not self._sources.take(key, now):
            if stranger:
                self._strangers.tokens += 1.0  # one source's flood must not use up the strangers' share
            self._hot = (key, now + 1.0 / self.limits.per_source_rate)
            self.counts.refused_source += 1
            return False
        self.counts.admitted += 1
        return True
