"""Many Ed25519 checks at once, split across two cores (the cold sync of a large mesh).

A cold sync of 10,000 members spends most of its time in 10,000 self-signature checks.
cryptography holds the GIL while it verifies, so threads gain nothing; a forked child does.
Fork only from a single-threaded process: a lock another thread held at fork time would stay
held in the child forever. Otherwise, and whenever the child fails in any way, the checks run
here, one after another. The answer never depends on which way was taken.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from meshctl.keys import VerifyKey

# A fork of a ~100 MB process costs a few ms; one check ~85 us on this machine.
MIN_FORKED_CHECKS: Final = 512


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """True when any of `signatures` is `key`'s over `message`."""

    key: VerifyKey
    signatures: tuple[bytes, ...]
    message: bytes

    def passes(self) -> bool:
        return any(self.key.verify(sig, self.message) for sig in self.signatures)


def _run(checks: Sequence[SignatureCheck]) -> bytes:
    return bytes(check.passes() for check in checks)


def can_fork() -> bool:
    return hasattr(os, "fork") and (os.cpu_count() or 1) > 1 and threading.active_count() == 1


def run_checks(checks: Sequence[SignatureCheck]) -> list[bool]:
    """Each check's verdict, in order."""
    if len(checks) < MIN_FORKED_CHECKS or not can_fork():
        return [bool(b) for b in _run(checks)]
    half = len(checks) // 2
    collect = _in_child(checks[half:])
    try:
        mine = _run(checks[:half])
    finally:
        got = collect()  # also on the way out of an exception: no child is left behind
    if got is None:
        got = _run(checks[half:])
    return [bool(b) for b in mine + got]


def _in_child(checks: Sequence[SignatureCheck]) -> Callable[[], bytes | None]:
    """Start `checks` in a forked child; returns a function that waits for its verdicts
    (None when the child did not deliver all of them)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return lambda: None
    if pid == 0:  # the child: verify, write, and leave without running any exit handler
        code = 1
        try:
            os.close(read_end)
            view = memoryview(_run(checks))
            while view:
                view = view[os.write(write_end, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)

    def collect() -> bytes | None:
        chunks = []
        try:
            while chunk := os.read(read_end, 65536):
                chunks.append(chunk)
        finally:
            os.close(read_end)
            _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        return data if status == 0 and len(data) == len(checks) else None

    return collect
