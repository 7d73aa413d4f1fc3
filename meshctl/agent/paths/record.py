"""One record per peer: its direct paths, its relay and channel state, what WireGuard was told.

The record holds state only (no I/O); the engine (engine.py) feeds it events and asks
`facts()` for the pure choice (choose.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshctl.agent.paths.choose import Choice, PeerFacts, Via
from meshctl.coord.endpoint_record import MAX_CANDIDATES as MAX_RECORD_CANDIDATES
from meshctl.coord.endpoint_record import EndpointRecord, canonical_candidate
from meshctl.coord.endpoint_verify import usable_candidates
from meshctl.coord.netmap import Peer
from meshctl.errors import ParseError
from meshctl.keys import DiscoPublic, NodePublic
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.paths import PathKind, PeerPaths, is_designated_initiator


def literal_endpoints(peer: Peer) -> tuple[AddrPort, ...]:
    """The peer's static endpoints that are literal IPv4 `IP:PORT` (names are resolved apart)."""
    out = []
    for text in peer.endpoints:
        try:
            out.append(parse_addr_port(text))
        except ParseError:
            continue
    return tuple(out)


def on_link(endpoint: AddrPort, networks: Iterable[ipaddress.IPv4Interface]) -> bool:
    """Whether `endpoint` sits in one of our connected subnets (no router, so no NAT, between)."""
    return any(endpoint.ip in net.network and endpoint.ip != net.ip and net.network.prefixlen < 32
               for net in networks)


def record_candidates(record: EndpointRecord, wg_key: NodePublic, disco_key: DiscoPublic,
                      now: int) -> tuple[AddrPort, ...]:
    """A record's candidates this node may probe now (fresh, made for the member's keys), IPv4."""
    out = []
    for text in usable_candidates(record, wg_key, disco_key, now):
        try:
            addr = parse_addr_port(text)
        except ParseError:
            continue
        if addr.ip.version == 4:  # the raw socket that punches and probes is IPv4
            out.append(addr)
    return tuple(out)


def record_text(candidates: Iterable[AddrPort]) -> tuple[str, ...]:
    """Our candidates as an endpoint record holds them (canonical text; anything else left out)."""
    out = []
    for c in candidates:
        try:
            out.append(canonical_candidate(str(c)))
        except ValueError:
            continue
    return tuple(dict.fromkeys(out))[:MAX_RECORD_CANDIDATES]


def unproven_candidate(candidates: tuple[AddrPort, ...], local: Iterable[ipaddress.IPv4Interface]) -> str | None:
    """For a peer without an agent and without a static endpoint: the candidate WireGuard may use
    unproven, one on our own subnet first, else its first (its public address, STUN-mapped or local)."""
    near = next((c for c in candidates if on_link(c, local)), None)
    pick = near or next(iter(candidates), None)
    return str(pick) if pick is not None else None


@dataclass
class PeerRecord:
    """Everything the engine knows about one peer."""

    name: str
    wg_key: NodePublic
    disco_key: DiscoPublic
    mesh_ip: str | None
    literal_statics: tuple[AddrPort, ...]
    first_seen: float
    paths: PeerPaths | None = None  # the direct-path core, once our first netcheck is done
    paths_since: float = 0.0  # when the core was made (its first packets wait for our punches)
    static: str | None = None  # the first static endpoint of its record, resolved
    on_link_static: str | None = None
    heard: bool = False  # any disco from it, direct or relayed: it runs an agent
    heard_at: float | None = None  # when the last one came (HA liveness, agent/failover.py)
    endpoint_record: EndpointRecord | None = None  # its newest accepted endpoint record (git host)
    record_candidates: tuple[AddrPort, ...] = ()  # what that record gave its core (fresh only)
    unproven: str | None = None  # of those candidates, the one to use when no agent runs there
    told: tuple[AddrPort, ...] = ()  # the candidates its core has told it (call-me-maybe)
    direct_since: float | None = None
    last_direct: str | None = None
    no_direct_reported: bool = False
    kind: PathKind = PathKind.NONE  # the path kind its core last reported
    proxied: bool = False  # it has had its relay proxy as WireGuard endpoint
    relayed_since: float | None = None  # when its current relayed spell began
    ready_at: float = float("-inf")  # when a relay last said its channel is READY
    channel_asked_at: float = float("-inf")
    bound: tuple[str, int, bytes, float] | None = None  # (relay ip, port, bind token, when) of the last bind
    channel: str | None = None  # its channel's endpoint, READY in this relayed spell
    choice: Choice = field(default_factory=lambda: Choice(Via.NONE))
    written: tuple[str, int] | None = None  # (endpoint, keepalive) last handed to WireGuard
    reassert_at: float | None = None  # write it again then (WireGuard may roam back meanwhile)
    reasserted_at: float = float("-inf")
    next_due: float = 0.0  # when the engine must serve this record again without any event

    @classmethod
    def of(cls, peer: Peer, now: float) -> PeerRecord:
        return cls(peer.name, peer.wg_public_key, peer.disco_key,
                   str(peer.ipv4 or peer.ipv6) if peer.addresses else None, literal_endpoints(peer), now)

    def no_agent_endpoint(self) -> str | None:
        """Its record says no agent answers disco there (`meshctl sync` from cron): no probe ever
        will, and it never sends first, so nothing of it can be poisoned: its static endpoint,
        else a candidate of its record, is used at once."""
        if self.endpoint_record is None or self.endpoint_record.agent:
            return None
        return self.static or self.unproven

    @property
    def agent_record(self) -> bool:
        """Its endpoint record is fresh (it has usable candidates) and says an agent runs there."""
        return self.endpoint_record is not None and self.endpoint_record.agent and bool(self.record_candidates)

    @property
    def pathless(self) -> bool:
        """No path at all (neither direct nor relayed) as its core sees it."""
        return self.paths is None or self.paths.path.kind is PathKind.NONE

    def same_peer(self, peer: Peer) -> bool:
        """Keys unchanged: the record (and its paths) still describe this member."""
        return peer.wg_public_key == self.wg_key and peer.disco_key == self.disco_key

    def initiator(self, ours: NodePublic, our_nat_hard: bool) -> bool:
        if self.paths is not None:
            return self.paths.initiator
        return is_designated_initiator(ours, self.wg_key, our_nat_hard, False)

    def facts(self, ours: NodePublic, our_nat_hard: bool, relays_listed: bool, relay_up: bool) -> PeerFacts:
        path = self.paths.path if self.paths is not None else None
        direct = str(path.endpoint) if path is not None and path.kind is PathKind.DIRECT and path.endpoint else None
        return PeerFacts(
            initiator=self.initiator(ours, our_nat_hard), first_seen=self.first_seen, direct=direct,
            direct_since=self.direct_since if direct else None, last_direct=self.last_direct,
            on_link_static=self.on_link_static, no_agent=self.no_agent_endpoint(), static=self.static,
            heard=self.heard, agent_record=self.agent_record,
            relays_listed=relays_listed, relay_up=relay_up, proxied=self.proxied, channel=self.channel)
