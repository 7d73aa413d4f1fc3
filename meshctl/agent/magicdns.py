"""MagicDNS inside the agent: the server, following every accepted map.

The system resolver is a subsystem of the pass (dns/os_plan.py): each pass reads it, and
points it at this server once the server serves (and back, when it no longer should). So
the system is never without working DNS:
- up: the server binds (100.100.100.100 and the node's mesh addresses, port 53; FREEBIND,
  so before the addresses exist) first; the next pass points the OS at it; the previous
  upstreams become the forwarders;
- down: the OS settings are restored first, then the server stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from meshctl.coord.netmap import NetMap
from meshctl.errors import MeshctlError
from meshctl.settings import Settings

if TYPE_CHECKING:
    from meshctl.dns.resolvconf import Endpoint
    from meshctl.dns.server import DnsServer

log = logging.getLogger(__name__)

MAGIC_INTERFACE_ADDRESS: Final = ipaddress.IPv4Interface("100.100.100.100/32")


def dns_port() -> int:
    return int(os.environ.get("MESHCTL_DNS_PORT", "53"))


class MagicDns:
    """The agent's DNS server (daemon.Extension); `serving` tells the pass to point the OS at it."""

    def __init__(self, settings: Settings, started: Callable[[], None]) -> None:
        """`started`: the server answers now (the agent runs a pass to point the OS at it)."""
        self.settings = settings
        self._started = started
        self.server: DnsServer | None = None
        self.error: str | None = None
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        from meshctl.dns.os_config import OsDnsConfig

        OsDnsConfig(self.settings.state_dir, self.settings.interface).recover()  # a crash may have left it

    def update_netmap(self, netmap: NetMap) -> None:
        asyncio.get_running_loop().create_task(self.serve(netmap))

    async def serve(self, netmap: NetMap) -> None:
        """Answer for `netmap`'s names: a new zone, or the server started with it."""
        from meshctl.dns.server import DnsServer
        from meshctl.dns.zone import listen_addresses, zone_from_netmap

        async with self._lock:
            try:
                zone = zone_from_netmap(netmap)
                if self.server is not None:
                    self.server.update_zone(zone)
                    return
                server = DnsServer(zone, [(a, dns_port()) for a in listen_addresses(netmap)])
                await server.start()
            except MeshctlError as exc:
                if exc.message != self.error:
                    log.error("MagicDNS: %s", exc.message)
                self.error = exc.message
                return
            self.server, self.error = server, None
            log.info("MagicDNS serving %s", zone.domain)
        self._started()

    def set_upstreams(self, upstreams: Sequence[Endpoint]) -> None:
        """Where names outside the mesh go (from the resolver the OS had before)."""
        if self.server is not None:
            self.server.set_upstreams(upstreams)

    async def stop(self) -> None:
        from meshctl.dns.os_config import OsDnsConfig

        async with self._lock:
            OsDnsConfig(self.settings.state_dir, self.settings.interface).restore()
            if self.server is not None:
                await self.server.stop()
                self.server = None

    def status(self) -> dict[str, Any]:
        from meshctl.dns.os_config import OsDnsConfig

        mode = OsDnsConfig(self.settings.state_dir, self.settings.interface).detect_mode().value if self.server else ""
        return {"dns": {"serving": self.server is not None, "mode": mode, "error": self.error}}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        return None
