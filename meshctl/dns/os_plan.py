"""The operating system's resolver as a subsystem of the pass: state, wish and plan (pure).

    state = OsDnsConfig.read()        (dns/os_config.py: /etc/resolv.conf, resolved's link)
    plan = plan_dns(state, wanted)    (here)
    OsDnsConfig.apply(plan)           (setup or restore)

`wanted` None means meshctl serves no DNS here (no agent, or `--no-accept-dns`): whatever it
left behind (a crashed agent's resolv.conf pointing at a server that is gone) is restored.
A resolv.conf rewritten by someone else while MagicDNS is wanted (a DHCP client, say) is
pointed back on the next pass; the new file becomes the one `meshctl down` restores.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshctl.dns.resolvconf import DnsMode, Endpoint


@dataclass(frozen=True, slots=True)
class DnsWanted:
    """MagicDNS for the mesh domain, answered by the agent's server."""

    domain: str
    reverse_domains: tuple[str, ...] = ()  # routing domains for resolved (mesh PTR zones)
    own_addresses: tuple[str, ...] = ()  # where our server listens: never an upstream


@dataclass(frozen=True, slots=True)
class DnsState:
    mode: DnsMode
    pointed_at_us: bool  # resolv.conf is meshctl's / resolved's link names our server
    domain: str | None  # the mesh domain it routes (resolv.conf: first search domain)
    leftover: bool  # a backup or a resolved mark of meshctl's exists
    upstreams: tuple[Endpoint, ...] = ()  # where names outside the mesh go (resolv.conf mode)


class DnsAction(enum.Enum):
    SETUP = "setup"
    RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class DnsPlan:
    action: DnsAction | None = None
    wanted: DnsWanted | None = None

    def is_empty(self) -> bool:
        return self.action is None

    def describe(self) -> list[str]:
        if self.action is DnsAction.SETUP and self.wanted is not None:
            return [f"point the system resolver at MagicDNS for {self.wanted.domain}"]
        if self.action is DnsAction.RESTORE:
            return ["restore the system resolver meshctl had changed"]
        return []


def plan_dns(state: DnsState, wanted: DnsWanted | None) -> DnsPlan:
    if wanted is None:
        return DnsPlan(DnsAction.RESTORE) if state.leftover or state.pointed_at_us else DnsPlan()
    if state.pointed_at_us and state.leftover and state.domain == wanted.domain:
        return DnsPlan()
    return DnsPlan(DnsAction.SETUP, wanted)
