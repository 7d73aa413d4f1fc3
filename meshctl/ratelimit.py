"""Token buckets, one or one per source in a bounded table (pure: `now` is passed in).

One limiter for the whole code base: the relay charges a member's bytes to a TokenBucket,
MagicDNS gives each asking address a bucket of queries, and the agent admits disco and STUN
packets per sending address (nat/admission.py) before any parsing or cryptography.

A `BucketTable` holds at most `max_entries` buckets. A new key when the table is full evicts
the key least recently seen: forgetting a source only gives it a full bucket again, so an
attacker cycling through sources gains nothing over a global limit, which is what a caller
puts in front of the table when sources can be forged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second up to `burst`; `now` passed in (seconds, any monotonic clock)."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, n: float, now: float) -> bool:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class BucketTable(Generic[K]):
    """A token bucket per key (a source address), at most `max_entries` of them."""

    def __init__(self, rate: float, burst: float, max_entries: int) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError("a bucket table needs a positive rate, a burst of at least 1 and room for one key")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: K, now: float, n: float = 1.0) -> bool:
        """Charge `n` to `key`'s bucket (a new key starts full); False when it has not got `n`."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(n, now)

    def forget(self, key: K) -> None:
        self._buckets.pop(key, None)
