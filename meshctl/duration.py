"""Durations on the command line: `90d`, `12h`, `30m`, `45s`, `2w` (pure)."""

from __future__ import annotations

import re
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE: Final = re.compile(r"\A([0-9]{1,6})([smhdw])\Z")
MAX_DURATION_S: Final = 10 * 366 * 86400  # ten years: anything longer is a typo


def parse_duration(text: str) -> int:
    """Seconds in `text` (a positive whole number and one unit); ValueError naming the form."""
    m = _DURATION_RE.match(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text[:40]!r}: expected a duration such as 90d, 12h or 30m")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text[:40]!r}: at most ten years")
    return seconds


def format_duration(seconds: int) -> str:
    """The largest whole unit that fits exactly, e.g. 7776000 -> '90d'."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"
