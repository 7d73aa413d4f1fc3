"""/etc/resolv.conf text: read the previous resolvers, render meshctl's version (pure).

Parsing is lenient like glibc's: unknown lines are ignored, it never raises.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

MARKER: Final = "# meshctl: MagicDNS"  # first line of every file meshctl writes
UPSTREAM_COMMENT: Final = "# meshctl-upstream "  # previous resolvers, kept even if the backup is lost
RESOLVED_STUB: Final = "127.0.0.53"  # systemd-resolved's stub listener
GLIBC_DEFAULT_NAMESERVER: Final = "127.0.0.1"  # what glibc uses when no nameserver line exists
DNS_PORT: Final = 53

Endpoint = tuple[str, int]


class DnsMode(enum.Enum):
    RESOLVED = "systemd-resolved"  # split DNS on the mesh interface
    RESOLV_CONF = "resolv.conf"  # rewrite the file, forward the rest upstream


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # whole "options ..." lines, kept verbatim
    upstream_comments: tuple[str, ...] = ()  # from a file meshctl wrote


def is_ours(text: str) -> bool:
    return text.startswith(MARKER)


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    upstreams: list[str] = []
    for raw in text.splitlines():
        if raw.startswith(UPSTREAM_COMMENT):
            upstreams.append(raw[len(UPSTREAM_COMMENT) :].strip())
            continue
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        words = line.split()
        if len(words) < 2:
            continue
        key, rest = words[0], words[1:]
        if key == "nameserver":
            nameservers.append(rest[0])
        elif key in ("search", "domain"):  # the last of the two wins, as in glibc
            search = rest if key == "search" else rest[:1]
        elif key == "options":
            options.append(" ".join(words))
    return ResolvConf(tuple(nameservers), tuple(search), tuple(options), tuple(upstreams))


def upstreams_of(previous: ResolvConf, exclude: Iterable[str]) -> tuple[Endpoint, ...]:
    """The resolvers to forward to: the previous nameservers minus our own addresses.

    A file meshctl wrote carries the upstreams in comments; a file without any
    nameserver line means glibc's default, 127.0.0.1.
    """
    skip = {_canonical(a) for a in exclude}
    names = previous.upstream_comments or previous.nameservers
    if not names:
        names = (GLIBC_DEFAULT_NAMESERVER,)
    out: list[Endpoint] = []
    for name in names:
        if _canonical(name) in skip or name == "":
            continue
        if (name, DNS_PORT) not in out:
            out.append((name, DNS_PORT))
    return tuple(out)


def render_resolv_conf(nameserver: str, domain: str, previous: ResolvConf, upstreams: Iterable[Endpoint]) -> str:
    """meshctl's resolv.conf: our nameserver, the mesh domain first in `search`."""
    search = [domain] + [d for d in previous.search if d.rstrip(".").lower() != domain]
    lines = [
        MARKER,
        "# Written by meshctl; the original is restored by `meshctl down`.",
        *(f"{UPSTREAM_COMMENT}{host}" for host, _port in upstreams),
        f"nameserver {nameserver}",
        f"search {' '.join(search)}",
        *previous.options,
    ]
    return "\n".join(lines) + "\n"


def choose_mode(*, resolvectl_present: bool, resolved_running: bool, current: str) -> DnsMode:
    """Split DNS through systemd-resolved only when programs actually ask resolved.

    resolved may run while /etc/resolv.conf lists other servers (then glibc never
    asks resolved and a per-link setting would change nothing).
    """
    if resolvectl_present and resolved_running:
        if RESOLVED_STUB in parse_resolv_conf(current).nameservers:
            return DnsMode.RESOLVED
    return DnsMode.RESOLV_CONF


def _canonical(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr.split("%", 1)[0]))
    except ValueError:
        return addr
