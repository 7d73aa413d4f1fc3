"""Fixtures for the MagicDNS tests; helpers live in dnssupport.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnssupport import PEERS, ServerThread, StubUpstream, make_netmap

from meshctl.coord.netmap import NetMap
from meshctl.dns.zone import Zone, zone_from_netmap


@pytest.fixture
def netmap() -> NetMap:
    return make_netmap(PEERS)


@pytest.fixture
def zone(netmap: NetMap) -> Zone:
    return zone_from_netmap(netmap)


@pytest.fixture
def upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream()
    try:
        yield stub
    finally:
        stub.close()


@pytest.fixture
def dns_server(zone: Zone, upstream: StubUpstream) -> Iterator[ServerThread]:
    srv = ServerThread(zone, [("127.0.0.1", upstream.port)])
    try:
        yield srv
    finally:
        srv.close()
