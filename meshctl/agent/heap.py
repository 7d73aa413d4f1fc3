"""Keep the long-running agent's resident memory near what it uses (glibc's malloc).

Python frees its own small objects in arenas of its own; what grows is the C heap below it
(libgit2 packs and indexes, OpenSSL, pyroute2's buffers), which glibc keeps mapped after
free. Two levers, both no-ops where the C library is not glibc:
- at most two malloc arenas: each thread that mallocs otherwise gets its own (up to 8 per
  core), and a sync pass runs in a worker thread;
- `malloc_trim(0)` after each pass hands freed pages back to the kernel.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Final

M_ARENA_MAX: Final = -8  # from glibc's malloc.h
AGENT_ARENAS: Final = 2


@cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols already in this process: libc among them
        libc.mallopt  # noqa: B018 - glibc only: musl has neither mallopt nor malloc_trim
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = AGENT_ARENAS) -> bool:
    """Cap malloc's arenas; call before the agent starts its threads."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return freed heap pages to the kernel; True when some were."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
