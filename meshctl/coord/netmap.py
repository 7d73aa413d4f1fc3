"""The verified network map: what every other subsystem consumes (pure).

A NetMap is only ever built by `meshctl.coord.verify` from a repository state
whose signatures, hashes and serial were checked. Everything downstream
(WireGuard config, nftables filter, DNS zone, path manager, relay admission)
reads this value and nothing from the repository directly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from meshctl.coord.records import AuthKey, Revoked
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
    expires: int | None = None  # membership expiry: nodes drop the member from then on
    enrolled_with: str = ""  # the auth key id of a device enrolled without an admin, not yet in state.json

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
    # What nodes judge enrollments by (coord/delegation.py): the scoped delegations, and the keys
    # and resting addresses of revoked devices.
    authkeys: tuple[AuthKey, ...] = ()
    revoked: tuple[Revoked, ...] = ()
    # Members of the signed state this node no longer counts, with why (coord/effective.py: an
    # expired membership); empty in the map of the signed state itself.
    dropped: tuple[tuple[str, str], ...] = ()
    signed: NetMap | None = field(default=None, compare=False, repr=False)  # the map in force: the state's own
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
        return self.replace(self_name=name)

    def replace(self, **changes: Any) -> NetMap:
        """A copy with some fields changed (its own name index: never the original's)."""
        return dataclasses.replace(self, **changes, _by_name={})
