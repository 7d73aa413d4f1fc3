"""Pause Python's cyclic garbage collector while a pass runs.

A pass at 10,000 peers builds some 100,000 small objects (peers, their prefixes, their configs
and plans) while the map they come from is alive. Each time the young generation fills, the
collector walks it, and every tenth time the older generations, the whole map included: a
fifth of a pass that changes nothing. The pass makes almost no reference cycles, so it runs
with the collector paused; whatever it left behind is collected once the collector runs again.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Usable as a decorator. Nested or already paused: left as it was found."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def no_collection_at_exit() -> None:
    """For a command that exits after its pass (`meshctl sync`): skip the interpreter's final
    full collection, which walks every object still alive when it exits (at 10,000 peers the
    map, the desired state and the read-back: about a quarter of a no-op sync's CPU).
    gc.freeze() at exit moves them out of the collector's sight; the process ends anyway.
    Exit handlers registered earlier (logging's flush) still run after it."""
    atexit.unregister(gc.freeze)  # once, however often a test runs the command in one process
    atexit.register(gc.freeze)
