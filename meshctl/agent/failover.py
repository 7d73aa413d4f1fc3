"""High availability for subnet routes (issue 19, item 4): which router of a group carries a prefix
for this node (shell around routes.choose_primary).

Two or more members approved for the same prefix form a group. Every POLL_INTERVAL_S the monitor
asks the NAT-traversal engine whether each router's agent still answers (Magic.liveness: a direct
path's 3 s heartbeats, or disco over a relay, which it asks for every RELAY_PING_INTERVAL_S while a
router has no direct path) and keeps `choose_primary`'s answer per prefix: the first router by name
at first, the next one when the primary is known dead, and back only when that one dies too. A
change asks the agent for a pass, which moves the prefix to the new router's WireGuard allowed IPs;
the route in meshctl's table stays on the mesh interface, so the switch costs no route change and
the prefix never leaves the tunnel.

Only nodes that accept routes watch; `meshctl sync` from cron has no monitor and uses the first
router by name. A node with no group to watch (most nodes, and every node of a mesh without HA
routes) has no timer here at all: the monitor sleeps until a map brings a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from meshctl.coord.netmap import NetMap, Prefix
from meshctl.coord.routes import Liveness, choose_primary, ha_groups

log = logging.getLogger(__name__)

POLL_INTERVAL_S: Final = 1.0
RELAY_PING_INTERVAL_S: Final = 2.0
RELAY_PING_TIMEOUT_S: Final = 1.5


class RouteFailover:
    """An agent Extension (daemon.Extension): the HA primaries, fed to every pass."""

    def __init__(self, liveness: Callable[[str], Liveness], request_pass: Callable[..., None],
                 relay_ping: Callable[[str, float], Any] | None = None,
                 direct: Callable[[str], bool] = lambda _name: False,
                 watching: Callable[[], bool] = lambda: True) -> None:
        self._liveness = liveness
        self._request_pass = request_pass
        self._relay_ping = relay_ping  # Magic.ping_via_relay (a coroutine function), or None
        self._direct = direct  # whether a peer has a direct path (its heartbeats say enough)
        self._watching = watching  # whether this node accepts routes at all (prefs)
        self._groups: dict[Prefix, tuple[str, ...]] = {}
        self._primaries: dict[Prefix, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._active: asyncio.Event | None = None  # set while there is a group to watch
        self._pinging: set[str] = set()
        self._since_ping = 0.0

    async def start(self) -> None:
        self._active = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def update_netmap(self, netmap: NetMap) -> None:
        groups = ha_groups({p.name: p.approved_routes for p in netmap.others() if p.approved_routes})
        if groups != self._groups:
            self._groups = groups
            self._primaries = {p: n for p, n in self._primaries.items() if p in groups and n in groups[p]}
            self.evaluate()
        if self._active is not None:
            if groups and self._watching():
                self._active.set()
            else:
                self._active.clear()

    def endpoint_overrides(self) -> dict[str, str | None]:
        return {}

    def route_choices(self) -> Mapping[Prefix, str]:
        return dict(self._primaries)

    def status(self) -> dict[str, Any]:
        return {"route_primaries": {str(p): n for p, n in sorted(self._primaries.items(), key=lambda i: str(i[0]))}}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def evaluate(self) -> bool:
        """Choose every group's primary from the routers' liveness now; True when one changed."""
        if not self._watching():
            return False
        changed = False
        for prefix, routers in self._groups.items():
            liveness = {r: self._liveness(r) for r in routers}
            current = self._primaries.get(prefix)
            pick = choose_primary(routers, liveness, current)
            if pick is not None and pick != current:
                if current is not None:
                    log.info("route %s: %s -> %s (%s)", prefix, current, pick,
                             ", ".join(f"{r} {liveness[r].value}" for r in routers))
                self._primaries[prefix] = pick
                changed = True
        if changed:
            self._request_pass()
        return changed

    async def _run(self) -> None:
        assert self._active is not None
        while True:
            await self._active.wait()  # no group to watch: no wakeups
            await asyncio.sleep(POLL_INTERVAL_S)
            self.evaluate()
            self._since_ping += POLL_INTERVAL_S
            if self._relay_ping is not None and self._since_ping >= RELAY_PING_INTERVAL_S:
                self._since_ping = 0.0
                self._ping_relayed()

    def _ping_relayed(self) -> None:
        """Routers without a direct path are asked over the relay (their answer is disco heard)."""
        assert self._relay_ping is not None
        routers = {r for group in self._groups.values() for r in group}
        for name in sorted(routers - self._pinging):
            if self._direct(name):
                continue
            self._pinging.add(name)
            task = asyncio.get_running_loop().create_task(self._relay_ping(name, RELAY_PING_TIMEOUT_S))
            task.add_done_callback(self._done_pinging(name))

    def _done_pinging(self, name: str) -> Callable[[asyncio.Task[Any]], None]:
        return lambda _task: self._pinging.discard(name)
