"""When the agent fetches again to look for peers' endpoint records (pure).

While some peer has no path at all, its record (or a newer one) is what would give it one, so
the agent fetches sooner than its sync interval: FIRST_S after the peer lost (or never had) its
path, then every time FACTOR times later, up to the sync interval itself. Two agents started
together find each other's records within seconds; a peer that stays offline costs a handful of
extra fetches, then none. The fast pace starts over when another peer loses its path or the
record of a peer without one brings candidates it had not tried. With every peer connected
there is no deadline here: the agent fetches once per sync interval.
"""

from __future__ import annotations

from typing import Final

FIRST_S: Final = 1.0
FACTOR: Final = 1.5  # 1, 1.5, 2.3, 3.4, 5.1, 7.6, 11, 17, 26, 38 s: ten fetches in the first two minutes


class RecordPoll:
    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s
        self._looking: frozenset[str] = frozenset()
        self._delay = FIRST_S
        self._next: float | None = None

    def update(self, pathless: frozenset[str], news: bool, now: float) -> None:
        """`pathless`: peers with no path now; `news`: one of them has new candidates to try."""
        if not pathless:
            self._looking, self._next = frozenset(), None
            return
        if pathless - self._looking or news or self._next is None:
            self._delay = min(FIRST_S, self.cap_s)
            self._next = now + self._delay
        self._looking = pathless

    def fetched(self, now: float) -> None:
        """A fetch happened (whatever asked for it): the next poll backs off from now."""
        if self._next is None:
            return
        self._delay = min(self._delay * FACTOR, self.cap_s)
        self._next = now + self._delay

    def deadline(self) -> float | None:
        """When to fetch next for the peers without a path; None: only the sync interval."""
        return self._next
