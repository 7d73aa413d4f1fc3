"""The soak: a LAN mesh with an agent per node while peers join and leave through the repository.

Shared by tests/soak/ (short) and bench/soak.py (20 nodes, 15 minutes). Root, network lab.

- `Soak.build`: n hosts on one LAN, every device joined, approved and merged, `meshctl up
  --sync-interval S` on each (the agents pick up the admin's pushes on their own timer);
- `Soak.leave` / `Soak.rejoin`: the churn. Leaving is `meshctl admin revoke` pushed to the lab's
  git server, then `meshctl down` on the device; rejoining wipes the device's state directory
  (new identity and WireGuard keys, a new name `nK-gG`), `meshctl join` (a pull-request branch),
  the admin's approve + merge + push, and `meshctl up`. Stable nodes never leave: their agents
  run for the whole soak and are the ones measured for growth;
- `Soak.sample`: every running agent's RSS, fds and threads, each node's rule count in `table netdev
  meshctl` and the lab's wireguard-go processes;
- `Soak.converged`, `Soak.ping_pairs`: at the end every remaining pair pings over its mesh IPv4.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lab import Lab, LabError, Node
from lab.scenario import MeshScenario
from lab.topology import one_lan
from meshctl.wg.userspace import SOCKET_DIR, pid_alive, wireguard_go_processes

WG_PORT: Final = 51820
MAX_PACK_FDS: Final = 3
PARALLEL: Final = 4  # meshctl commands at once (start-up is mostly interpreter CPU)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@dataclass(frozen=True, slots=True)
class AgentSample:
    pid: int
    rss_kib: int
    fds: int  # not counting git pack files (below)
    threads: int
    pack_fds: int = 0  # pack files libgit2 holds open (its window cache keeps the last used ones)


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the churn started
    members: int  # members in the admin's current state
    agents: dict[str, AgentSample]  # slot -> its agent (slots whose agent runs)
    nft_rules: dict[str, int]  # slot -> rules in table netdev meshctl (-1: no table)
    wireguard_go: int  # wireguard-go processes serving this lab's interfaces
    nodes_up: int
    wg_go_stray: int = 0  # missing, duplicate or unowned wireguard-go (nodes mid-change excluded)
    wg_peers: dict[str, int] = field(default_factory=dict)  # slot -> peers its WireGuard lists


@dataclass
class Slot:
    """One lab host; `name` is the member it currently runs as, None while it is out."""

    node: Node
    stable: bool
    name: str | None = None
    generation: int = 1
    busy: bool = False  # leaving or joining right now


@dataclass
class Soak:
    lab: Lab
    n: int
    churners: int
    sync_interval_s: float = 2.0
    slots: dict[str, Slot] = field(default_factory=dict)
    events: list[tuple[float, str, str, float]] = field(default_factory=list)  # (t, kind, name, seconds)
    leftovers: list[str] = field(default_factory=list)  # what a `down` left running
    admin_lock: threading.Lock = field(default_factory=threading.Lock)

    # --- building -------------------------------------------------------------------------

    def build(self) -> None:
        if not 0 <= self.churners < self.n:
            raise ValueError("churners must be fewer than nodes")
        topo = one_lan(self.lab, self.n)
        self.mesh = MeshScenario(self.lab, topo.git_url, topo.repo_dir, "soak")
        self.mesh.init()
        for i, host in enumerate(topo.hosts, start=1):
            self.lab.meshctl_env(host)  # create state dirs / interface names before any thread does
            self.slots[host.name] = Slot(host, stable=i <= self.n - self.churners)
        for slot in self.slots.values():
            slot.name = self._member_name(slot)
        self._parallel(lambda s: self._join(s), self.slots.values())
        for slot in self.slots.values():
            assert slot.name is not None
            self.mesh.approve(slot.name)
        self._parallel(lambda s: self._up(s), self.slots.values())

    def _member_name(self, slot: Slot) -> str:
        return slot.node.name if slot.stable else f"{slot.node.name}-g{slot.generation}"

    def _parallel(self, fn: Callable[[Slot], None], slots: Iterable[Slot]) -> None:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for future in [pool.submit(fn, s) for s in slots]:
                future.result()

    def _join(self, slot: Slot) -> None:
        assert slot.name is not None
        self.mesh.join(slot.node, slot.name, endpoint=f"{slot.node.ipv4}:{WG_PORT}")

    def _up(self, slot: Slot) -> None:
        assert slot.name is not None
        self.mesh.up(slot.name, "--sync-interval", f"{self.sync_interval_s:g}")

    # --- paths and processes --------------------------------------------------------------

    def state_dir(self, slot: Slot) -> Path:
        return Path(self.lab.meshctl_env(slot.node)["MESHCTL_STATE_DIR"])

    def ifname(self, slot: Slot) -> str:
        return self.lab.meshctl_env(slot.node)["MESHCTL_INTERFACE"]

    def agent_pid(self, slot: Slot) -> int | None:
        try:
            pid = int((self.state_dir(slot) / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def wireguard_go_pids(self) -> list[tuple[str, int]]:
        """(interface, pid) of every live wireguard-go serving one of this lab's interfaces."""
        return [(name, pid) for name, pid in wireguard_go_processes() if name.startswith(self.lab.run_id)]

    def wg_go_stray(self, running: Sequence[tuple[str, int]]) -> int:
        """wireguard-go processes that should not be there, plus the ones missing, counting
        every node that is not in the middle of a change: exactly one per node that is up."""
        ifaces = [i for i, _ in running]
        stray = 0
        for slot in self.slots.values():
            if slot.busy:
                continue
            n = ifaces.count(self.ifname(slot))
            stray += abs(n - (1 if slot.name is not None else 0))
        known = {self.ifname(s) for s in self.slots.values()}
        return stray + sum(1 for i in ifaces if i not in known)

    def _running_ifaces(self) -> set[str]:
        return {i for i, _ in self.wireguard_go_pids()}

    @property
    def up_slots(self) -> list[tuple[str, Slot]]:
        return [(k, s) for k, s in self.slots.items() if s.name is not None]

    @property
    def stable_slots(self) -> list[str]:
        return [k for k, s in self.slots.items() if s.stable]

    # --- churn ----------------------------------------------------------------------------

    def leave(self, key: str, t: float = 0.0) -> None:
        """The admin revokes the member (commit, push); the device goes down."""
        slot = self.slots[key]
        assert slot.name is not None and not slot.stable
        start = time.monotonic()
        with self.admin_lock:  # one admin checkout: commits one at a time
            self.mesh.revoke(slot.name)
        self.lab.meshctl(slot.node, ["down"])
        del self.mesh.members[slot.name]
        ifname = self.ifname(slot)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (ifname in self._running_ifaces() or self.agent_pid(slot)):
            time.sleep(0.1)
        if ifname in self._running_ifaces():
            self.leftovers.append(f"{slot.name}: wireguard-go for {ifname} still runs after `meshctl down`")
        if self.agent_pid(slot) is not None:
            self.leftovers.append(f"{slot.name}: the agent still runs after `meshctl down`")
        if (SOCKET_DIR / f"{ifname}.sock").exists():
            self.leftovers.append(f"{slot.name}: {SOCKET_DIR}/{ifname}.sock left after `meshctl down`")
        self.events.append((t, "leave", slot.name, time.monotonic() - start))
        slot.name = None

    def rejoin(self, key: str, t: float = 0.0) -> None:
        """A new device on the same host: fresh keys and name, join, approve, merge, up."""
        slot = self.slots[key]
        assert slot.name is None
        start = time.monotonic()
        state = self.state_dir(slot)
        shutil.rmtree(state)
        state.mkdir(mode=0o700)
        slot.generation += 1
        slot.name = self._member_name(slot)
        self._join(slot)
        with self.admin_lock:
            self.mesh.approve(slot.name)
        self._up(slot)
        self.events.append((t, "join", slot.name, time.monotonic() - start))

    def churn(self, seconds: float, every_s: float, sample_every_s: float,
              on_sample: Callable[[Sample], None], workers: int = 2) -> list[Sample]:
        """Leaves and joins among the churners for `seconds`, sampling every `sample_every_s`
        (the samples are returned). `workers` changes run at once (the admin's commits one at
        a time), each worker starting one every `every_s` at most. Leaves until half the
        churners are out, then the longest-out one comes back and the longest-in one leaves, in
        turn. Ends with every slot joined again."""
        churn_keys = [k for k, s in self.slots.items() if not s.stable]
        joined = deque(k for k in churn_keys if self.slots[k].name is not None)
        out: deque[str] = deque(k for k in churn_keys if self.slots[k].name is None)
        most_out = max(1, len(churn_keys) // 2)
        leaving = [0]
        lock = threading.Lock()
        start = time.monotonic()
        errors: list[BaseException] = []

        def worker() -> None:
            while time.monotonic() - start < seconds and not errors:
                event_start = time.monotonic()
                with lock:
                    if joined and len(out) + leaving[0] < most_out:
                        key, kind = joined.popleft(), "leave"
                        leaving[0] += 1
                    elif out:
                        key, kind = out.popleft(), "join"
                    else:
                        key, kind = "", ""
                    if key:
                        self.slots[key].busy = True
                try:
                    if kind == "leave":
                        self.leave(key, event_start - start)
                    elif kind == "join":
                        self.rejoin(key, event_start - start)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)
                    return
                finally:
                    with lock:
                        if kind == "leave":
                            leaving[0] -= 1
                            out.append(key)
                        elif kind == "join":
                            joined.append(key)
                        if key:
                            self.slots[key].busy = False
                pause = every_s - (time.monotonic() - event_start)
                if pause > 0:
                    time.sleep(pause)

        threads = [threading.Thread(target=worker, name=f"churn-{i}", daemon=True) for i in range(workers)]
        if churn_keys:
            for i, th in enumerate(threads):
                th.start()
                if i + 1 < len(threads):
                    time.sleep(every_s / len(threads))
        samples: list[Sample] = []
        next_sample = start + sample_every_s
        while any(th.is_alive() for th in threads):
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
            if time.monotonic() >= next_sample and not errors:
                samples.append(self.sample(time.monotonic() - start))
                on_sample(samples[-1])
                next_sample += sample_every_s
        if errors:
            raise errors[0]
        for key in churn_keys:
            if self.slots[key].name is None:
                self.rejoin(key, time.monotonic() - start)
        return samples

    # --- measuring ------------------------------------------------------------------------

    def nft_rules(self, slot: Slot) -> int:
        proc = self.lab.run(slot.node, ["nft", "-j", "list", "table", "netdev", "meshctl"], check=False)
        if proc.returncode != 0:
            return -1
        return sum(1 for item in json.loads(proc.stdout)["nftables"] if "rule" in item)

    def sample(self, t: float) -> Sample:
        agents = {}
        for key, slot in self.up_slots:
            pid = self.agent_pid(slot)
            if pid is None:
                continue
            with contextlib.suppress(OSError, KeyError, ValueError):
                st = proc_status(pid)
                fds, packs = open_fds(pid)
                agents[key] = AgentSample(pid, int(st["VmRSS"].split()[0]), fds, int(st["Threads"]), packs)
        keys, slots = [k for k, _ in self.up_slots], [s for _, s in self.up_slots]
        with ThreadPoolExecutor(PARALLEL) as pool:
            rules = dict(zip(keys, pool.map(self.nft_rules, slots), strict=True))
            peers = dict(zip(keys, pool.map(self.wg_peer_count, slots), strict=True))
        running = self.wireguard_go_pids()
        return Sample(t, len(self.mesh.members), agents, rules, len(running), len(self.up_slots),
                      self.wg_go_stray(running), peers)

    def quiet_sample(self, t: float, reads: int = 5, gap_s: float = 0.5) -> Sample:
        """`reads` samples `gap_s` apart folded into one: per agent the fewest fds and threads
        (a sync pass in flight holds a git connection and pack files for a moment) and the
        mean RSS; per node the most common rule count."""
        taken = []
        for i in range(reads):
            if i:
                time.sleep(gap_s)
            taken.append(self.sample(t))
        agents = {}
        for key in taken[-1].agents:
            seen = [s.agents[key] for s in taken if key in s.agents]
            agents[key] = AgentSample(seen[-1].pid, round(statistics.mean(a.rss_kib for a in seen)),
                                      min(a.fds for a in seen), min(a.threads for a in seen),
                                      min(a.pack_fds for a in seen))
        rules = {k: statistics.mode(s.nft_rules[k] for s in taken if k in s.nft_rules) for k in taken[-1].nft_rules}
        last = taken[-1]
        return Sample(t, last.members, agents, rules, max(s.wireguard_go for s in taken), last.nodes_up,
                      max(s.wg_go_stray for s in taken), last.wg_peers)

    def wg_peer_count(self, slot: Slot) -> int:
        out = self.lab.run(slot.node, ["wg", "show", self.ifname(slot), "peers"], check=False).stdout
        return len(out.split())

    def converged(self, timeout_s: float) -> list[str]:
        """Wait until every node's WireGuard lists every other current member; the laggards."""
        want = len(self.up_slots) - 1
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = [f"{s.name}: {n} peers, want {want}" for _, s in self.up_slots
                       if (n := self.wg_peer_count(s)) != want]
            if not lagging or time.monotonic() > deadline:
                return lagging
            time.sleep(0.5)

    def pairs(self) -> list[tuple[str, str]]:
        names = [s.name for _, s in self.up_slots if s.name is not None]
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]

    def ping_pairs(self, pairs: Sequence[tuple[str, str]], tries: int = 3) -> list[tuple[str, str]]:
        """Ping b's mesh IPv4 from a for each pair (up to `tries` single echoes); the pairs that failed."""
        def ok(pair: tuple[str, str]) -> bool:
            a, b = pair
            return any(self.mesh.ping(a, self.mesh.members[b].mesh_ipv4, count=1, timeout_s=2)
                       for _ in range(tries))

        with ThreadPoolExecutor(PARALLEL * 2) as pool:
            results = list(pool.map(ok, pairs))
        return [p for p, good in zip(pairs, results, strict=True) if not good]

    def shutdown(self) -> None:
        """`meshctl down` on every node that is up (best effort, in parallel), and remove any
        wireguard-go socket of this lab left in the shared socket directory."""
        procs = [self.lab.meshctl_popen(s.node, ["down"]) for _, s in self.up_slots]
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.wait(60)
        for sock in SOCKET_DIR.glob(f"{self.lab.run_id}*.sock"):
            sock.unlink(missing_ok=True)


def open_fds(pid: int) -> tuple[int, int]:
    """(open fds that are not git pack files, open git pack files) of a process."""
    other = packs = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "/objects/pack/" in target:
            packs += 1
        else:
            other += 1
    return other, packs




# --- verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    metric: str
    start: float
    end: float
    max: float
    growth: float
    tolerance: str
    ok: bool
    worst: str = ""  # which node grew most


def window(samples: Sequence[Sample], fraction: float, last: bool) -> list[Sample]:
    k = max(1, round(len(samples) * fraction))
    return list(samples[-k:] if last else samples[:k])


def judge(samples: Sequence[Sample], stable: Sequence[str], *, rss_tolerance_kib: int, rss_tolerance_pct: float,
          window_fraction: float = 0.2) -> list[Verdict]:
    """Growth of each stable agent and node from the first to the last sample (same membership:
    both are taken with every slot joined and converged), and memory from the first window's
    mean to the last window's mean (worst agent)."""
    first, last = samples[0], samples[-1]
    verdicts = []

    def per_node(metric: str, get: Callable[[Sample, str], float], tol: float) -> None:
        growth = {k: get(last, k) - get(first, k) for k in stable}
        worst = max(growth, key=lambda k: growth[k])
        verdicts.append(Verdict(
            metric, sum(get(first, k) for k in stable) / len(stable), sum(get(last, k) for k in stable) / len(stable),
            max(get(s, k) for s in samples for k in stable if k in s.agents and k in s.nft_rules),
            growth[worst], f"<= {tol:+g} per node", growth[worst] <= tol, worst))

    per_node("agent fds, no git packs (mean)", lambda s, k: s.agents[k].fds, 0)
    per_node("nft rules, table netdev meshctl", lambda s, k: s.nft_rules[k], 0)
    # asyncio's default executor (sync passes, getaddrinfo) starts its threads lazily, up to
    # min(32, CPUs + 4): reaching that cap later in the run is not a leak; going past it is.
    cap = 1 + min(32, (os.cpu_count() or 1) + 4)
    worst_t = max(stable, key=lambda k: last.agents[k].threads - first.agents[k].threads)
    verdicts.append(Verdict(
        "agent threads (mean of stable)", statistics.mean(first.agents[k].threads for k in stable),
        statistics.mean(last.agents[k].threads for k in stable),
        max(s.agents[k].threads for s in samples for k in stable if k in s.agents),
        last.agents[worst_t].threads - first.agents[worst_t].threads, f"end <= max(start, {cap})",
        all(last.agents[k].threads <= max(first.agents[k].threads, cap) for k in stable), worst_t))
    # libgit2 keeps recently used pack files open (a new pack arrives with most fetches); one
    # leaked per fetch would be dozens by the end.
    worst_p = max(stable, key=lambda k: last.agents[k].pack_fds)
    verdicts.append(Verdict(
        "git pack files open (mean)", statistics.mean(first.agents[k].pack_fds for k in stable),
        statistics.mean(last.agents[k].pack_fds for k in stable),
        max(s.agents[k].pack_fds for s in samples for k in stable if k in s.agents),
        last.agents[worst_p].pack_fds - first.agents[worst_p].pack_fds, f"end <= {MAX_PACK_FDS} per agent",
        last.agents[worst_p].pack_fds <= MAX_PACK_FDS, worst_p))

    head, tail = window(samples, window_fraction, False), window(samples, window_fraction, True)
    growth_kib = {k: statistics.mean(s.agents[k].rss_kib for s in tail if k in s.agents)
                  - statistics.mean(s.agents[k].rss_kib for s in head if k in s.agents) for k in stable}
    worst = max(growth_kib, key=lambda k: growth_kib[k])
    head_mean = statistics.mean(s.agents[worst].rss_kib for s in head if worst in s.agents)
    limit = max(rss_tolerance_kib, head_mean * rss_tolerance_pct / 100)
    verdicts.append(Verdict(
        "agent RSS MiB (mean of stable; windows)",
        statistics.mean(s.agents[k].rss_kib for s in head for k in stable if k in s.agents) / 1024,
        statistics.mean(s.agents[k].rss_kib for s in tail for k in stable if k in s.agents) / 1024,
        max(s.agents[k].rss_kib for s in samples for k in stable if k in s.agents) / 1024,
        growth_kib[worst] / 1024, f"<= {limit / 1024:.1f} MiB per agent", growth_kib[worst] <= limit, worst))

    verdicts.append(Verdict("wireguard-go processes (lab)", first.wireguard_go, last.wireguard_go,
                            max(s.wireguard_go for s in samples), last.wireguard_go - first.wireguard_go,
                            "one per node up, every sample", all(s.wg_go_stray == 0 for s in samples)
                            and last.wireguard_go == first.wireguard_go))
    return verdicts


def same_pid(samples: Sequence[Sample], stable: Sequence[str]) -> list[str]:
    """Stable nodes whose agent restarted or vanished during the soak."""
    bad = []
    for k in stable:
        pids = {s.agents[k].pid if k in s.agents else None for s in samples}
        if len(pids) != 1 or None in pids:
            bad.append(f"{k}: agent pids {sorted(str(p) for p in pids)}")
    return bad


def format_table(verdicts: Sequence[Verdict]) -> str:
    headers = ["metric", "start", "end", "max", "growth", "tolerance", "worst node", "verdict"]
    rows = [[v.metric, f"{v.start:.1f}", f"{v.end:.1f}", f"{v.max:.1f}", f"{v.growth:+.1f}", v.tolerance,
             v.worst, "ok" if v.ok else "GREW"] for v in verdicts]
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def need_soak_tools() -> str | None:
    from lab import lab_unavailable

    reason = lab_unavailable()
    if reason:
        return reason
    for tool in ("wireguard-go", "wg", "git", "ping"):
        if shutil.which(tool) is None:
            return f"the soak needs `{tool}`"
    return None


__all__ = ["LabError", "Sample", "Soak", "Verdict", "format_table", "judge", "need_soak_tools", "same_pid"]
