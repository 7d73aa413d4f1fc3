"""Our own endpoint candidates: STUN from WireGuard's port every RESTUN_INTERVAL_S (shell).

A `netcheck.Netcheck` core runs against the map's STUN servers; its packets leave from the
engine's raw socket on WireGuard's port, so the mapping it learns is WireGuard's, and the
answers come back through the engine's one receive entry point. The STUN-mapped endpoint
and the local addresses are the candidates told to every peer (call-me-maybe); a mapping
that varies by destination marks our NAT as hard (we then start the handshakes). A mesh that
lists no STUN servers (a LAN): the candidates are the local addresses alone, looked at again
every RESTUN_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Final

from meshctl.errors import MeshctlError, ParseError
from meshctl.nat import netcheck
from meshctl.nat.addr import AddrPort

log = logging.getLogger(__name__)

RESTUN_INTERVAL_S: Final = 20.0  # re-STUN below the 30 s NAT idle timeout (DESIGN.md)
NETCHECK_TIMEOUT_S: Final = 2.0


def own_candidates(local_ips: Iterable[ipaddress.IPv4Address], port: int,
                   report: netcheck.NetcheckReport | None) -> tuple[AddrPort, ...]:
    """Our endpoint candidates: the STUN-preferred mapping first, then local addresses."""
    out: list[AddrPort] = []
    if report is not None and report.preferred_endpoint is not None:
        out.append(report.preferred_endpoint)
    out += [AddrPort(ip, port) for ip in local_ips if not (ip.is_loopback or ip.is_unspecified)]
    return tuple(dict.fromkeys(out))


def nat_status(report: netcheck.NetcheckReport | None) -> dict[str, Any]:
    if report is None:
        return {"udp": None, "mapping_varies_by_dest": None, "preferred_endpoint": None}
    return {
        "udp": report.udp,
        "mapping_varies_by_dest": report.mapping_varies_by_dest,
        "preferred_endpoint": str(report.preferred_endpoint) if report.preferred_endpoint else None,
    }


def local_ipv4_interfaces(exclude_ifname: str) -> list[ipaddress.IPv4Interface]:
    """Global IPv4 addresses of this host with their prefixes, except loopback and the mesh
    interface (one netlink dump)."""
    from meshctl.netaddrs import ipv4_interfaces

    return ipv4_interfaces(exclude_ifname)


class OwnEndpoints:
    """STUN refresh and local addresses; `changed()` fires when the candidates or NAT class move."""

    def __init__(self, interface: str, port: int, send: Callable[[bytes, AddrPort], object],
                 changed: Callable[[], None]) -> None:
        self.interface = interface
        self.port = port
        self._send = send
        self._changed = changed
        self._specs: tuple[str, ...] | None = None  # none asked yet: an empty list settles at once
        self._servers: list[netcheck.StunServer] = []
        self._core: netcheck.Netcheck | None = None
        self._next_run = 0.0
        self.report: netcheck.NetcheckReport | None = None
        self.local: list[ipaddress.IPv4Interface] = []
        self.candidates: tuple[AddrPort, ...] = ()
        self.hard = False
        self.settled = False  # a netcheck has finished (or there is no STUN server to ask); the
        # engine also sets it when the first netcheck takes too long

    @property
    def servers(self) -> list[netcheck.StunServer]:
        """The STUN servers asked (resolved): the only sources STUN answers may come from."""
        return self._servers

    async def refresh_local(self, update_candidates: bool = False) -> None:
        """Our local addresses (off the loop); `update_candidates`: no STUN, they are our candidates."""
        try:
            self.local = await asyncio.to_thread(local_ipv4_interfaces, self.interface)
        except (OSError, MeshctlError) as exc:
            log.warning("cannot list local addresses: %s", exc)
        if update_candidates and self._set_candidates(own_candidates((i.ip for i in self.local), self.port, None)):
            self._changed()

    def set_servers(self, specs: tuple[str, ...]) -> None:
        """The map's STUN servers (resolved off the loop); none settles at once."""
        if specs == self._specs:
            return
        self._specs = specs
        if not specs:
            self._servers = []
            self._settle()
            return
        asyncio.get_running_loop().create_task(self._resolve(specs))

    async def _resolve(self, specs: tuple[str, ...]) -> None:
        try:
            resolved, failed = await asyncio.to_thread(netcheck.resolve_servers, specs)
        except ParseError as exc:
            log.warning("bad STUN server in the coordination state: %s", exc)
            return
        for spec, why in failed:
            log.warning("STUN server %s: %s", spec, why)
        if specs == self._specs:
            self._servers = resolved
            self._next_run = 0.0  # now
            if not resolved:
                self._settle()
            self._changed()

    def receive_stun(self, payload: bytes, src: AddrPort, now: float) -> None:
        if self._core is not None:
            self._core.receive_stun(payload, src, now)

    def step(self, now: float) -> float | None:
        """Send what is due, finish a run whose time is up; the next deadline."""
        if self._core is None and self._servers and now >= self._next_run:
            asyncio.get_running_loop().create_task(self.refresh_local())  # used from the next report on
            self._core = netcheck.Netcheck(self._servers, now, os.urandom, NETCHECK_TIMEOUT_S)
        core = self._core
        if core is None:
            return self._next_run if self._servers else self._refresh_local_only(now)
        for payload, dst in core.datagrams_to_send(now):
            self._send(payload, dst)
        if core.done(now):
            self._core = None
            self._next_run = now + RESTUN_INTERVAL_S
            self._apply(core.report())
            return self._next_run
        return core.next_deadline()

    def _apply(self, report: netcheck.NetcheckReport) -> None:
        old, self.report = self.report, report
        if old is None or (old.udp, old.mapping_varies_by_dest) != (report.udp, report.mapping_varies_by_dest):
            log.info("netcheck: udp %s, mapping varies by destination %s, preferred %s",
                     report.udp, report.mapping_varies_by_dest, report.preferred_endpoint)
        self.hard = bool(report.mapping_varies_by_dest)
        self._set_candidates(own_candidates((i.ip for i in self.local), self.port, report))
        self._settle()
        self._changed()

    def _set_candidates(self, new: tuple[AddrPort, ...]) -> bool:
        if new == self.candidates:
            return False
        log.info("own endpoints: %s", " ".join(map(str, new)) or "(none)")
        self.candidates = new
        return True

    def _refresh_local_only(self, now: float) -> float | None:
        """No STUN server listed: our local addresses are our candidates, every RESTUN_INTERVAL_S."""
        if not self.settled:
            return None  # the map's servers are not known yet
        if now >= self._next_run:
            self._next_run = now + RESTUN_INTERVAL_S
            asyncio.get_running_loop().create_task(self.refresh_local(update_candidates=True))
        return self._next_run

    def _settle(self) -> None:
        self.settled = True
