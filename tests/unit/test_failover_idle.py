"""The HA route monitor wakes only while there is a group of routers to watch (issue 22: an idle
agent has no polling loop)."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

import pytest

from meshctl.agent import failover
from meshctl.agent.failover import RouteFailover
from meshctl.coord.routes import Liveness


@dataclass(frozen=True)
class _Peer:  # the two fields RouteFailover reads from a map's peers
    name: str
    approved_routes: tuple[ipaddress.IPv4Network, ...] = ()


@dataclass(frozen=True)
class _Map:
    peers: tuple[_Peer, ...]

    def others(self) -> tuple[_Peer, ...]:
        return self.peers


OFFICE = ipaddress.IPv4Network("192.168.50.0/24")
NO_GROUPS = _Map((_Peer("a"), _Peer("b", (OFFICE,))))  # one router is no group
HA_GROUP = _Map((_Peer("r1", (OFFICE,)), _Peer("r2", (OFFICE,))))


async def _looks(maps: list[_Map], watching: bool = True, seconds: float = 0.3) -> int:
    """How often the monitor woke to look (each look asks whether this node watches at all)
    while it ran with these maps in turn."""
    looks: list[bool] = []

    def watches() -> bool:
        looks.append(watching)
        return watching

    monitor = RouteFailover(lambda _name: Liveness.ALIVE, lambda: None, watching=watches)
    await monitor.start()
    try:
        for netmap in maps:
            monitor.update_netmap(netmap)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        before = len(looks)
        await asyncio.sleep(seconds)
        return len(looks) - before
    finally:
        await monitor.stop()


@pytest.fixture(autouse=True)
def _fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failover, "POLL_INTERVAL_S", 0.01)


def test_no_group_no_wakeups() -> None:
    assert asyncio.run(_looks([NO_GROUPS])) == 0


def test_a_group_is_watched_and_stops_being_watched_when_it_goes() -> None:
    assert asyncio.run(_looks([HA_GROUP])) >= 10
    assert asyncio.run(_looks([HA_GROUP, NO_GROUPS])) == 0


def test_a_node_that_does_not_accept_routes_does_not_watch() -> None:
    assert asyncio.run(_looks([HA_GROUP], watching=False)) == 0
