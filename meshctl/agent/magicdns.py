"""MagicDNS inside the agent: the resolver follows every accepted map; the OS is pointed at it.

Order, so the system is never without working DNS:
- up: the server binds (100.100.100.100 and the node's mesh addresses, port 53) first,
  then the OS is pointed at it (split DNS with systemd-resolved, else resolv.conf with a
  backup), then the previous upstreams become the forwarders;
- down: the OS settings are restored first, then the server stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from typing import TYPE_CHECKING, Any, Final

from meshctl.coord.netmap import NetMap, Prefix
from meshctl.errors import MeshctlError
from meshctl.settings import Settings

if TYPE_CHECKING:
    from meshctl.dns.os_config import OsDnsConfig
    from meshctl.dns.server import DnsServer

log = logging.getLogger(__name__)

MAGIC_INTERFACE_ADDRESS: Final = ipaddress.IPv4Interface("100.100.100.100/32")


def dns_port() -> int:
    return int(os.environ.get("MESHCTL_DNS_PORT", "53"))


class MagicDns:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: DnsServer | None = None
        self.os_config: OsDnsConfig | None = None
        self.mode = ""
        self.error: str | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        from meshctl.dns.os_config import OsDnsConfig

        self.os_config = OsDnsConfig(self.settings.state_dir, self.settings.interface)
        self.os_config.recover()  # a crash may have left our resolv.conf in place

    def update_netmap(self, netmap: NetMap) -> None:
        asyncio.get_running_loop().create_task(self._update(netmap))

    async def _update(self, netmap: NetMap) -> None:
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
                self.server = server
                assert self.os_config is not None
                me = netmap.self_peer
                setup = self.os_config.setup(zone.domain, reverse_domains=zone.reverse_routing_domains(),
                                             own_addresses=[str(a) for a in me.addresses] if me else [])
                server.set_upstreams(setup.upstreams)
                self.mode = setup.mode.value
                self.error = None
                log.info("MagicDNS serving %s (%s)", zone.domain, self.mode)
            except MeshctlError as exc:
                self.error = exc.message
                log.error("MagicDNS: %s", exc.message)

    async def stop(self) -> None:
        async with self._lock:
            if self.os_config is not None:
                self.os_config.restore()
            if self.server is not None:
                await self.server.stop()
                self.server = None

    def route_choices(self) -> dict[Prefix, str]:
        return {}

    def endpoint_overrides(self) -> dict[str, str | None]:
        return {}

    def status(self) -> dict[str, Any]:
        return {"dns": {"serving": self.server is not None, "mode": self.mode, "error": self.error}}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        return None
