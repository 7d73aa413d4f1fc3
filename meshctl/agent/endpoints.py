"""Resolve static "host:port" endpoints from peer records to "IP:port" (shell: DNS lookups)."""

from __future__ import annotations

import ipaddress
import logging
import socket

from meshctl.coord.netmap import NetMap
from meshctl.errors import UsageError
from meshctl.wg.config import canonical_endpoint, format_endpoint

log = logging.getLogger(__name__)


def resolve_endpoint(text: str) -> str | None:
    try:
        return canonical_endpoint(text)  # an IP literal with a port: nothing to resolve (cached, fast)
    except UsageError:
        pass
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        return format_endpoint(ipaddress.ip_address(host), port)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        log.warning("cannot resolve endpoint %s: %s", text, exc)
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return format_endpoint(ipaddress.ip_address(info[4][0]), port)
    return None


def static_endpoints(netmap: NetMap) -> dict[str, str]:
    """First resolvable static endpoint of every other member."""
    out: dict[str, str] = {}
    for peer in netmap.others():
        for candidate in peer.endpoints:
            resolved = resolve_endpoint(candidate)
            if resolved:
                out[peer.name] = resolved
                break
    return out
