"""What a node accepted last (pure, and light: a no-op pass imports this and not the verifier)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# How long an admin's signature on state.json lasts (set by coord.admin, read by the clock check).
STATE_LIFETIME_S: Final = 30 * 86400  # a frozen repository is noticed within a month


@dataclass(frozen=True, slots=True)
class TrustMemory:
    """What a node accepted last; only ever moves forward."""

    root_hashes: tuple[str, ...]  # sha256 of root/1..N as accepted
    serial: int
    state_sha256: str
    commit: str | None = None
    expires: int | None = None  # of the accepted state: a no-op pass checks expiry from this alone

    @property
    def root_version(self) -> int:
        return len(self.root_hashes)
