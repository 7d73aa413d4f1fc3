"""The verified network map: what every other subsystem consumes (pure).

A NetMap is only ever built by `meshctl.coord.verify` from a repository state
whose signatures, hashes and serial were checked. Everything downstream
(WireGuard config, nftables filter, DNS zone, path manager, relay admission)
reads this value and nothing from the repository directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypeAlias

from meshctl.keys import DiscoPublic, NodePublic, VerifyKey

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Prefix: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Peer:
    """One member of the mesh, from its signed record plus the admin's assignment."""

    name: str
    identity_key: VerifyKey
    wg_public_key: NodePublic
    disco_key: DiscoPublic
    addresses: tuple[IPAddress, ...]  # IPv4 first, then IPv6
    tags: tuple[str, ...] = ()
    owner: str = ""
    endpoints: tuple[str, ...] = ()  # static "host:port" endpoints from the record
    # Routes the signed state approves for this device (a subnet router), and whether it is an
    # approved exit node: what the policy compiler lets others reach through it. Empty until
    # routes are signed (issue 19).
    approved_routes: tuple[Prefix, ...] = ()
    exit_node: bool = False

    @property
    def ipv4(self) -> ipaddress.IPv4Address | None:
        return next((a for a in self.addresses if a.version == 4), None)

    @property
    def ipv6(self) -> ipaddress.IPv6Address | None:
        return next((a for a in self.addresses if a.version == 6), None)


@dataclass(frozen=True, slots=True)
class Relay:
    """A user-run relay listed in state.json."""

    name: str
    address: str  # "host:port" (UDP; the TCP fallback uses the same port)
    identity_key: VerifyKey | None = None


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    network_id: str
    name: str
    ipv4_cidr: ipaddress.IPv4Network
    ipv6_prefix: ipaddress.IPv6Network
    domain: str


@dataclass(frozen=True, slots=True)
class NetMap:
    """A verified coordination state, seen from one node (`self_name`) or from none."""

    network: NetworkSettings
    serial: int
    expires: int  # unix seconds
    state_sha256: str
    peers: tuple[Peer, ...]  # every member, sorted by name (self included)
    relays: tuple[Relay, ...] = ()
    stun_servers: tuple[str, ...] = ()  # "host:port"
    policy_text: str = ""
    self_name: str | None = None
    _by_name: dict[str, Peer] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.peers})

    def peer(self, name: str) -> Peer | None:
        return self._by_name.get(name)

    @property
    def self_peer(self) -> Peer | None:
        return self._by_name.get(self.self_name) if self.self_name else None

    def others(self) -> tuple[Peer, ...]:
        """Every member except this node."""
        return tuple(p for p in self.peers if p.name != self.self_name)

    def peer_by_address(self, addr: IPAddress) -> Peer | None:
        return next((p for p in self.peers if addr in p.addresses), None)

    def with_self(self, name: str | None) -> NetMap:
        return NetMap(
            network=self.network,
            serial=self.serial,
            expires=self.expires,
            state_sha256=self.state_sha256,
            peers=self.peers,
            relays=self.relays,
            stun_servers=self.stun_servers,
            policy_text=self.policy_text,
            self_name=name,
        )
