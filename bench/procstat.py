"""CPU time and memory of processes, from /proc, for the benchmarks.

CPU comes two ways, and `cpu_used` picks the right one for an interval:
- /proc/PID/stat counts every thread of the process, also the ones that ended, plus the children
  it waited for, but only in clock ticks (10 ms: over a minute, 0.017 % of a core, more than
  tinc's whole idle cost);
- /proc/PID/task/*/schedstat gives each live thread's time on a CPU in nanoseconds, but forgets
  threads that ended.
The precise figure is used unless the coarse one shows more than two ticks beyond it (a thread or a
child ended in between and took its time with it).

The parsers are pure; the readers below them are the thin shell.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
TICK_S: Final = 1.0 / os.sysconf("SC_CLK_TCK")
SLACK_TICKS: Final = 2


@dataclass(frozen=True, slots=True)
class CpuReading:
    ticks_s: float  # utime + stime + cutime + cstime, from /proc/PID/stat
    sched_s: float  # sum over the live threads of /proc/PID/task/TID/schedstat's first field


ZERO: Final = CpuReading(0.0, 0.0)


def stat_fields(text: str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses):
    index 0 is the state, 1 the parent pid, 11..14 utime, stime, cutime, cstime."""
    return text.rpartition(")")[2].split()


def stat_cpu_s(text: str, tick_s: float = TICK_S) -> float:
    fields = stat_fields(text)
    return sum(int(f) for f in fields[11:15]) * tick_s


def schedstat_s(text: str) -> float:
    """A thread's time on a CPU from its schedstat line ("run_ns wait_ns slices")."""
    return int(text.split()[0]) / 1e9


def voluntary_switches(status_text: str) -> int:
    """voluntary_ctxt_switches from /proc/PID/task/TID/status: the times a thread went to sleep
    (waiting for a timer, a packet, a lock), so the times it was woken, give or take one."""
    for line in status_text.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def cpu_used(before: CpuReading, after: CpuReading, tick_s: float = TICK_S) -> float:
    """CPU seconds one process used between two readings (see the module docstring)."""
    coarse = after.ticks_s - before.ticks_s
    fine = after.sched_s - before.sched_s
    if fine < 0 or coarse - fine > SLACK_TICKS * tick_s:
        return max(coarse, 0.0)
    return fine


def tree_cpu_used(before: Mapping[int, CpuReading], after: Mapping[int, CpuReading],
                  tick_s: float = TICK_S) -> float:
    """CPU seconds a set of processes used: a process that started in between counts whole."""
    return sum(cpu_used(before.get(pid, ZERO), reading, tick_s) for pid, reading in after.items())


_SKMEM = re.compile(r"skmem:\(([^)]*)\)")


def skmem_buffers(ss_output: str) -> list[tuple[int, int]]:
    """(receive, send) buffer sizes of each socket in `ss -m` output ("skmem:(r0,rb212992,t0,tb212992,...)")."""
    out = []
    for match in _SKMEM.finditer(ss_output):
        fields = {}
        for item in match.group(1).split(","):
            name = item.rstrip("0123456789")
            if name and item[len(name):]:
                fields[name] = int(item[len(name):])
        if "rb" in fields and "tb" in fields:
            out.append((fields["rb"], fields["tb"]))
    return out


def rss_kib(status_text: str) -> int:
    """VmRSS from /proc/PID/status, in KiB (0 for a process without memory: a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- readers ------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def read_cpu(pid: int) -> CpuReading | None:
    stat = _read(PROC / str(pid) / "stat")
    if stat is None:
        return None
    sched = 0.0
    try:
        tids = os.listdir(PROC / str(pid) / "task")
    except OSError:
        tids = []
    for tid in tids:
        text = _read(PROC / str(pid) / "task" / tid / "schedstat")
        if text:
            sched += schedstat_s(text)
    return CpuReading(stat_cpu_s(stat), sched)


def read_wakeups(pid: int) -> int:
    """Wakeups of the live threads of `pid` so far (see voluntary_switches)."""
    try:
        tids = os.listdir(PROC / str(pid) / "task")
    except OSError:
        return 0
    texts = (_read(PROC / str(pid) / "task" / tid / "status") for tid in tids)
    return sum(voluntary_switches(t) for t in texts if t)


def read_cpu_of(pids: Iterable[int]) -> dict[int, CpuReading]:
    readings = {pid: read_cpu(pid) for pid in pids}
    return {pid: r for pid, r in readings.items() if r is not None}


def cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its descendants so far (tick precision; for long intervals)."""
    total = 0.0
    for p in descendants(pid):
        stat = _read(PROC / str(p) / "stat")
        if stat is not None:
            total += stat_cpu_s(stat)
    return total


def read_rss_kib(pid: int) -> int:
    text = _read(PROC / str(pid) / "status")
    return rss_kib(text) if text else 0


def parent_of(pid: int) -> int | None:
    stat = _read(PROC / str(pid) / "stat")
    return int(stat_fields(stat)[1]) if stat else None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            parent = parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def executable(pid: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "exe")
    except OSError:
        return None


def program_root(pid: int) -> int:
    """The process a program was started as: a PyInstaller one-file binary runs Python in a child
    of its bootloader (same executable), and both are the program's cost."""
    parent = parent_of(pid)
    if parent and parent > 1 and executable(parent) is not None and executable(parent) == executable(pid):
        return parent
    return pid
