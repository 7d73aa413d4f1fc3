"""Magic: the agent's NAT-traversal engine, beside WireGuard's own socket (shell).

Like Tailscale's magicsock, but meshctl is never in the data path: it finds a direct
UDP path to each peer and hands it to WireGuard as the peer's endpoint.

What it owns (all driven by the agent's asyncio loop, one reader and one timer):
- one `rawsock.SharedPortSocket` on WireGuard's listen port: STUN, disco and TTL-2
  punch packets leave from that port, so they learn and open WireGuard's own mapping;
- one sans-IO `paths.PeerPaths` per peer (created and removed by `update_netmap`),
  seeded with the peer's static endpoints from its signed record;
- a `disco.DiscoBox` with this node's disco key; only disco keys of the verified map
  may talk to us (the socket's BPF program already drops other keys, and STUN from anyone
  but the STUN servers we ask, in the kernel);
- an `admission.Admission`: every packet the socket delivers is admitted by its source
  (per-source token buckets, a shared one for sources we never sent to) before it is parsed
  or unsealed; while packets are being refused, reading pauses FLOOD_PAUSE_S after each
  wakeup, so a flood costs a batched read every few milliseconds instead of a wakeup per
  packet (the socket buffer holds what arrives meanwhile);
- a `netcheck.Netcheck` run against `netmap.stun_servers` every RESTUN_INTERVAL_S
  (below the 30 s NAT idle timeout): the mapped endpoint is a candidate, and a mapping
  that varies by destination marks our NAT as hard (we then start the handshakes).

Candidates (local addresses and the STUN-mapped one) go to each peer in call-me-maybe
over whatever path works: a static endpoint, a found path, or later the relay
(`send_via_relay`, None until the relay issue lands: disco with no address is dropped).

WireGuard endpoint policy (`endpoint_overrides`): no endpoint for a peer until a
direct path exists (static endpoints too: a WireGuard packet that reaches a bare
masquerade NAT before the peer's own first packet poisons its conntrack, so the TTL-2
punches go first and WireGuard only follows a proven path). The exception is a static
endpoint inside one of our own connected subnets: no NAT stands between us, nothing can
be poisoned, and WireGuard may use it at once (a LAN comes up as fast as `meshctl sync`). On a direct path the
designated initiator writes the endpoint at once; the other side waits
NON_INITIATOR_DELAY_S, by which time the initiator's handshake has usually arrived
and WireGuard has roamed to the same address, so the two sides don't start
handshakes at the same time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from meshctl.coord.endpoint_publish import PublishRequest
from meshctl.coord.endpoint_record import MAX_CANDIDATES as MAX_RECORD_CANDIDATES
from meshctl.coord.endpoint_record import EndpointRecord, canonical_candidate
from meshctl.coord.endpoint_verify import usable_candidates
from meshctl.coord.netmap import NetMap, Peer
from meshctl.coord.routes import Liveness
from meshctl.errors import MeshctlError, ParseError
from meshctl.keys import DiscoPublic, NodePublic
from meshctl.nat import admission, disco, netcheck, stun
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.paths import NoDirectPath, Path, PathChanged, PathKind, PeerPaths, SendDisco, SendPunch
from meshctl.settings import Settings

log = logging.getLogger(__name__)

RESTUN_INTERVAL_S: Final = 20.0  # re-STUN below the 30 s NAT idle timeout (DESIGN.md)
NETCHECK_TIMEOUT_S: Final = 2.0
# The first pings to a peer's static endpoints follow our TTL-2 punches by this much, so
# a peer starting at about the same time has punched its own NAT before our pings reach it.
PUNCH_LEAD_S: Final = 0.3
NON_INITIATOR_DELAY_S: Final = 1.0  # see the module docstring
# Peers are set up (first punch) only after the first netcheck, or this long after start
# without one: see `_stun_settled`.
STUN_FIRST_MAX_WAIT_S: Final = 3.0
PING_TIMEOUT_S: Final = 1.0  # `meshctl ping`: one attempt
# A peer silent on disco this long after it appeared probably runs no agent (a server synced from
# cron): fall back to its published endpoint. Not sooner: two agents behind bare masquerade NATs
# can be silent for a while (paths.py recovery rounds), and WireGuard's full-TTL handshakes to the
# other NAT would poison its conntrack again. 150 s is past the rounds' worst case (143 s).
# A peer whose endpoint record says it runs no agent (`meshctl sync` published it) needs no such
# guess: its endpoint is used at once (static_fallback). This wait is left for a peer without
# a record (no push rights), which may run an agent or not.
STATIC_FALLBACK_AFTER_S: Final = 150.0
PING_ATTEMPTS: Final = 3
MAX_RECV_PER_WAKEUP: Final = 512  # yield to the loop after this many packets
# After a wakeup that refused a packet, reading waits this long: at most 100 wakeups a second
# under a flood, each draining what queued (20,000 packets/s: 200 per wakeup, well inside the
# socket's 1 MiB buffer); what is admitted waits at most this long.
FLOOD_PAUSE_S: Final = 0.01
DROP_LOG_EVERY: Final = 100  # log dropped packets once per this many (never per packet)
# A peer without a direct path counts as alive while disco from it came this recently (the failover
# monitor asks a relayed router every 2 s); one never heard from is UNKNOWN this long after it appeared.
HEARD_ALIVE_S: Final = 6.0
LIVENESS_GRACE_S: Final = 10.0

RelaySend = Callable[[str, bytes], bool]


# --- pure helpers ------------------------------------------------------------------------------


def on_link(endpoint: AddrPort, networks: Iterable[ipaddress.IPv4Interface]) -> bool:
    """Whether `endpoint` sits in one of our connected subnets (no router, so no NAT, between)."""
    return any(endpoint.ip in net.network and endpoint.ip != net.ip and net.network.prefixlen < 32
               for net in networks)


def own_candidates(local_ips: Iterable[ipaddress.IPv4Address], port: int,
                   report: netcheck.NetcheckReport | None) -> tuple[AddrPort, ...]:
    """Our endpoint candidates: the STUN-preferred mapping first, then local addresses."""
    out: list[AddrPort] = []
    if report is not None and report.preferred_endpoint is not None:
        out.append(report.preferred_endpoint)
    out += [AddrPort(ip, port) for ip in local_ips if not (ip.is_loopback or ip.is_unspecified)]
    return tuple(dict.fromkeys(out))


def literal_endpoints(peer: Peer) -> tuple[AddrPort, ...]:
    """The peer's static endpoints that are literal IPv4 `IP:PORT` (names: see resolve_static)."""
    out = []
    for text in peer.endpoints:
        try:
            out.append(parse_addr_port(text))
        except ParseError:
            continue
    return tuple(out)


def peer_liveness(direct: bool, heard_at: float | None, created: float, now: float) -> Liveness:
    """See Magic.liveness."""
    if direct or (heard_at is not None and now - heard_at < HEARD_ALIVE_S):
        return Liveness.ALIVE
    if heard_at is None and now - created < LIVENESS_GRACE_S:
        return Liveness.UNKNOWN
    return Liveness.DEAD


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


def path_status(path: Path) -> dict[str, Any]:
    """The per-peer part of the status document."""
    return {
        "path": path.kind.value,
        "endpoint": str(path.endpoint) if path.kind is PathKind.DIRECT and path.endpoint else None,
        "relay": None,  # set once relays exist
        "latency_ms": round(path.latency_s * 1000, 3) if path.latency_s is not None else None,
    }


def nat_status(report: netcheck.NetcheckReport | None) -> dict[str, Any]:
    if report is None:
        return {"udp": None, "mapping_varies_by_dest": None, "preferred_endpoint": None}
    return {
        "udp": report.udp,
        "mapping_varies_by_dest": report.mapping_varies_by_dest,
        "preferred_endpoint": str(report.preferred_endpoint) if report.preferred_endpoint else None,
    }


def wanted_override(path: Path, initiator: bool, direct_since: float | None, now: float) -> str | None:
    """The WireGuard endpoint to write for a peer now (None: leave WireGuard alone)."""
    if path.kind is not PathKind.DIRECT or path.endpoint is None:
        return None
    if not initiator and (direct_since is None or now < direct_since + NON_INITIATOR_DELAY_S):
        return None
    return str(path.endpoint)


def local_ipv4_interfaces(exclude_ifname: str) -> list[ipaddress.IPv4Interface]:
    """Global IPv4 addresses of this host with their prefixes, except loopback and the mesh
    interface (one netlink dump)."""
    from meshctl.netaddrs import ipv4_interfaces

    return ipv4_interfaces(exclude_ifname)


# --- the engine ------------------------------------------------------------------------------


@dataclass
class _Peer:
    name: str
    wg_key: NodePublic
    disco_key: DiscoPublic
    mesh_ip: str | None
    paths: PeerPaths
    created: float
    told: tuple[AddrPort, ...] = ()  # the candidates this peer's core has (call-me-maybe)
    direct_since: float | None = None
    override: str | None = None
    no_direct_reported: bool = False
    heard: bool = False  # any disco from this peer, direct or relayed: it runs an agent
    heard_at: float | None = None  # when the last one came (HA liveness, agent/failover.py)
    static: str | None = None  # first static endpoint of its record, resolved to IP:PORT
    record: EndpointRecord | None = None  # its newest accepted endpoint record (git host)
    record_candidates: tuple[AddrPort, ...] = ()  # what the record gave its core (fresh only)
    kind: PathKind = PathKind.NONE  # the path kind last reported by its core


class Magic:
    """The NAT-traversal extension of the agent (see daemon.Extension)."""

    def __init__(self, settings: Settings, request_pass: Callable[..., None],
                 send_via_relay: RelaySend | None = None) -> None:
        self.settings = settings
        self._request_pass = request_pass
        # The seam for the relay issue: send a sealed disco packet to a peer over the relay.
        self.send_via_relay = send_via_relay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None  # rawsock.SharedPortSocket, imported in start()
        self._box: disco.DiscoBox | None = None
        self._our_key: NodePublic | None = None
        self._peers: dict[str, _Peer] = {}
        self._by_disco: dict[DiscoPublic, str] = {}
        self._stun_specs: tuple[str, ...] = ()
        self._stun_servers: list[netcheck.StunServer] = []
        self._netcheck: netcheck.Netcheck | None = None
        self._report: netcheck.NetcheckReport | None = None
        self._next_restun = 0.0
        self._local_ifaces: list[ipaddress.IPv4Interface] = []
        self._candidates: tuple[AddrPort, ...] = ()
        self._nat_hard = False
        self._timer: asyncio.TimerHandle | None = None
        self._manual_pings: dict[bytes, asyncio.Future[float]] = {}
        self._dropped = 0
        self._netmap: NetMap | None = None
        self._started_at = 0.0
        self._stun_settled = False
        self._records: Mapping[str, EndpointRecord] = {}  # the devices' endpoint records (git host)
        self._admission = admission.Admission()
        self._kernel_filter: tuple[tuple[bytes, ...], tuple[AddrPort, ...]] | None = None
        self._reading = False

    # --- Extension hooks ---------------------------------------------------------------------

    async def start(self) -> None:
        from meshctl.identity import load_device_keys
        from meshctl.nat.rawsock import SharedPortSocket

        keys = load_device_keys(self.settings.keys_dir)
        self._our_key = keys.wireguard.public()
        self._box = disco.DiscoBox(keys.disco, os.urandom)
        self._sock = SharedPortSocket(self.settings.listen_port)
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self._resume_reading()
        await self._refresh_local()
        log.info("NAT traversal on port %d (disco %s)", self.settings.listen_port, self._box.public.short())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None and self._loop is not None:
            self._pause_reading()
            self._sock.close()
            self._sock = None
        for fut in self._manual_pings.values():
            fut.cancel()

    def update_netmap(self, netmap: NetMap) -> None:
        if self._our_key is None or self._loop is None:
            return
        self._netmap = netmap
        specs = tuple(netmap.stun_servers)
        if specs != self._stun_specs:
            self._stun_specs = specs
            self._loop.create_task(self._resolve_stun(specs))
        if not specs:
            self._stun_settled = True
        self._sync_peers()
        self._update_kernel_filter()
        self._service()

    def _update_kernel_filter(self) -> None:
        """Disco only from the map's keys, STUN only from the servers we ask: in the kernel."""
        keys = tuple(sorted(p.disco_key.raw for p in self._netmap.others())) if self._netmap else ()
        wanted = (keys, tuple(s.addr for s in self._stun_servers))
        if wanted != self._kernel_filter and self._sock is not None:
            self._sock.set_filter(*wanted)
            self._kernel_filter = wanted

    def _sync_peers(self) -> None:
        """Create and forget per-peer cores to match the last map.

        Not before the first netcheck (`_stun_settled`): its STUN packets must leave our
        port before any packet towards a peer. On a plain Linux masquerade NAT a new flow
        reuses the mapping of the newest live flow from the same socket; STUN flows made
        while a peer flow is mapped to a random port (conntrack poisoning) would keep that
        random port alive for every later flow, while the peer only knows our real port.
        """
        if self._our_key is None or self._loop is None or self._netmap is None:
            return
        if not self._stun_settled:
            return
        netmap = self._netmap
        now = self._loop.time()
        wall_offset = time.time() - now
        wanted = {p.name: p for p in netmap.others()}
        for name in list(self._peers):
            p = wanted.get(name)
            cur = self._peers[name]
            if p is None or p.wg_public_key != cur.wg_key or p.disco_key != cur.disco_key:
                del self._peers[name]
                log.info("%s: forgotten (left the map or changed keys)", name)
        for name, p in wanted.items():
            if name in self._peers:
                self._peers[name].paths.add_static_endpoints(literal_endpoints(p), now)
                continue
            paths = PeerPaths(self._our_key, p.wg_public_key, now, os.urandom,
                              static_endpoints=literal_endpoints(p), our_nat_hard=self._nat_hard,
                              first_probe_delay_s=PUNCH_LEAD_S, wall_clock_offset_s=wall_offset)
            self._peers[name] = _Peer(name, p.wg_public_key, p.disco_key,
                                      str(p.ipv4 or p.ipv6) if p.addresses else None, paths, now)
            if p.endpoints:
                self._resolve_static(name, p.endpoints)
        self._by_disco = {p.disco_key: p.name for p in self._peers.values()}
        self._apply_records(now)

    # --- endpoint records through the git host (issue 18) -----------------------------------

    def update_endpoints(self, records: Mapping[str, EndpointRecord]) -> frozenset[str]:
        """The devices' records as this pass fetched them; returns the peers whose usable
        candidates changed (new to try: the agent looks for records faster again)."""
        self._records = records
        if self._loop is None:
            return frozenset()
        changed = self._apply_records(self._loop.time())
        self._service()
        return changed

    def _apply_records(self, now: float) -> frozenset[str]:
        """Hand each peer's core the fresh candidates of its record (none once stale)."""
        wall = int(time.time())
        changed = set()
        for peer in self._peers.values():
            rec = self._records.get(peer.name)
            peer.record = rec
            usable = record_candidates(rec, peer.wg_key, peer.disco_key, wall) if rec is not None else ()
            if usable != peer.record_candidates:
                if usable:
                    log.info("%s: endpoint record: %s", peer.name, " ".join(map(str, usable)))
                peer.record_candidates = usable
                peer.paths.set_record_candidates(usable, now)
                changed.add(peer.name)
        return frozenset(changed)

    def publish_request(self) -> PublishRequest | None:
        """What our own endpoint record would say now; None until the first netcheck settled
        (publishing the local addresses alone would cost a second push a second later)."""
        if not self._stun_settled or self._loop is None:
            return None
        looking = any(p.record_candidates and p.paths.path.kind is PathKind.NONE for p in self._peers.values())
        return PublishRequest(record_text(self._candidates), agent=True, someone_looking=looking)

    def pathless(self) -> frozenset[str]:
        """Peers with no path at all (no direct path, no relay): the agent looks for their records."""
        return frozenset(n for n, p in self._peers.items() if p.paths.path.kind is PathKind.NONE)

    def endpoint_overrides(self) -> dict[str, str | None]:
        # Every peer of the map is listed (also before its core exists): None keeps static
        # endpoints away from WireGuard until a probe proved the path (module docstring).
        out: dict[str, str | None] = {}
        if self._netmap is not None:
            out = {p.name: self._on_link_static(p) for p in self._netmap.others()}
        out.update({name: p.override or self.static_fallback(name) for name, p in self._peers.items()})
        return out

    def status(self) -> dict[str, Any]:
        return {
            "paths": {name: path_status(p.paths.path) for name, p in self._peers.items()},
            "endpoints": [str(c) for c in self._candidates],
            "nat": {**nat_status(self._report), "admission": asdict(self._admission.counts)},
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if request.get("cmd") != "ping":
            return None
        return await self.ping(str(request.get("peer", "")))

    # --- relay seam (issue 5; driven by meshctl/agent/relaying.py) ---------------------------

    def relay_view(self, name: str) -> tuple[Path, str | None, bool] | None:
        """(path, the direct endpoint WireGuard should use now or None, we initiate) of a
        peer; None before its core exists."""
        p = self._peers.get(name)
        if p is None:
            return None
        path = p.paths.path
        direct = p.override if path.kind is PathKind.DIRECT and p.override == str(path.endpoint) else None
        return path, direct, p.paths.initiator

    def set_relay_available(self, name: str, available: bool) -> None:
        p = self._peers.get(name)
        if p is None or self._loop is None:
            return
        p.paths.set_relay_available(available, self._loop.time())
        self._service()

    def receive_relayed_disco(self, src: NodePublic, data: bytes) -> None:
        """A sealed disco packet the relay brought from WireGuard key `src` (relay-attested)."""
        if self._box is None or self._loop is None:
            return
        try:
            sender, msg = self._box.open(data, self._by_disco)
        except disco.DiscoError:
            self._dropped += 1
            return
        peer = self._peers.get(self._by_disco.get(sender, ""))
        if peer is None or peer.wg_key != src:
            return  # the disco key must belong to the member the relay logged in
        now = self._loop.time()
        peer.heard_at = now  # sealed by its disco key, brought by the relay that logged it in: it lives
        if isinstance(msg, disco.Ping):
            # `meshctl ping` over the relay: answered there; it proves no direct path
            if msg.node_key == peer.wg_key:
                seen_as = AddrPort(ipaddress.IPv4Address("127.3.3.40"), 0)  # "via the relay"
                self._send_disco(peer, disco.Pong(msg.txid, seen_as), None)
            return
        if isinstance(msg, disco.Pong):
            fut = self._manual_pings.get(msg.txid)
            if fut is not None and not fut.done():
                fut.set_result(now)
            return  # a pong over the relay proves nothing about a direct path
        peer.heard = True
        peer.paths.receive_disco(msg, None, now)
        self._service()

    async def ping_via_relay(self, name: str, timeout_s: float) -> float | None:
        """One disco round trip over the relay: seconds, or None without an answer."""
        peer = self._peers.get(name)
        if peer is None or self._loop is None or self._our_key is None or self.send_via_relay is None:
            return None
        txid = os.urandom(disco.TXID_LEN)
        fut: asyncio.Future[float] = self._loop.create_future()
        self._manual_pings[txid] = fut
        sent_at = self._loop.time()
        self._send_disco(peer, disco.Ping(txid, self._our_key), None)
        try:
            return await asyncio.wait_for(fut, timeout_s) - sent_at
        except TimeoutError:
            return None
        finally:
            self._manual_pings.pop(txid, None)

    # --- end of relay seam -------------------------------------------------------------------

    def is_direct(self, name: str) -> bool:
        p = self._peers.get(name)
        return p is not None and p.paths.path.kind is PathKind.DIRECT

    def liveness(self, name: str) -> Liveness:
        """Whether a peer's agent answers (for HA routers, agent/failover.py): a direct path is
        alive by its heartbeats (3 s; dead after about 8 s without pongs, nat/paths.py); otherwise
        any disco heard from it in the last HEARD_ALIVE_S (the failover monitor pings relayed
        routers); UNKNOWN while it is new, DEAD after that."""
        p = self._peers.get(name)
        if p is None or self._loop is None:
            return Liveness.UNKNOWN
        now = self._loop.time()
        return peer_liveness(p.paths.path.kind is PathKind.DIRECT, p.heard_at, p.created, now)

    # --- ping --------------------------------------------------------------------------------

    def _find_peer(self, text: str) -> _Peer | None:
        for p in self._peers.values():
            if text in (p.name, p.mesh_ip):
                return p
        return None

    async def ping(self, target: str) -> dict[str, Any]:
        """One disco round trip on the peer's current path (like `tailscale ping`)."""
        peer = self._find_peer(target)
        if peer is None:
            return {"ok": False, "error": f"unknown peer {target[:64]!r}",
                    "hint": "`meshctl status` lists the peers"}
        base = {"peer": peer.name, "ip": peer.mesh_ip}
        assert self._loop is not None and self._box is not None and self._our_key is not None
        for _ in range(PING_ATTEMPTS):
            path = peer.paths.path
            if path.kind is not PathKind.DIRECT or path.endpoint is None:
                return {**base, "ok": False, "path": path.kind.value,
                        "error": f"no path to {peer.name}: no direct path found "
                                 f"({len(peer.paths.candidates())} candidates probed) and no relay",
                        "hint": "both NATs may be hard (symmetric); relays are not supported yet"}
            txid = os.urandom(disco.TXID_LEN)
            fut: asyncio.Future[float] = self._loop.create_future()
            self._manual_pings[txid] = fut
            sent_at = self._loop.time()
            self._send_disco(peer, disco.Ping(txid, self._our_key), path.endpoint)
            try:
                got = await asyncio.wait_for(fut, PING_TIMEOUT_S)
            except TimeoutError:
                continue
            finally:
                self._manual_pings.pop(txid, None)
            return {**base, "ok": True, "path": "direct", "endpoint": str(path.endpoint),
                    "relay": None, "latency_ms": round((got - sent_at) * 1000, 3)}
        return {**base, "ok": False, "path": peer.paths.path.kind.value,
                "error": f"no pong from {peer.name} after {PING_ATTEMPTS} pings"}

    # --- I/O ---------------------------------------------------------------------------------

    def _send_disco(self, peer: _Peer, msg: disco.DiscoMessage, dst: AddrPort | None) -> None:
        assert self._box is not None
        data = self._box.seal(msg, peer.disco_key)
        if dst is None:
            if self.send_via_relay is not None:
                self.send_via_relay(peer.name, data)
            return
        self._send(data, dst)

    def _send(self, payload: bytes, dst: AddrPort) -> None:
        """A disco or STUN packet from WireGuard's port: what comes back from `dst` is expected."""
        if self._sock is not None and self._loop is not None:
            self._admission.expect(dst, self._loop.time())
            self._sock.send(payload, dst)

    def send_from_wireguard_port(self, payload: bytes, dst: AddrPort) -> bool:
        """One datagram from WireGuard's listen port (a relay channel's bind): its NAT mapping."""
        return self._sock is not None and bool(self._sock.send(payload, dst))

    def _on_readable(self) -> None:
        """The one way in for disco and STUN on WireGuard's port: admitted by source first."""
        assert self._loop is not None
        now = self._loop.time()
        if self._sock is None:
            return
        admitted, refused = self._sock.recv_admitted(
            lambda raw: self._admission.admit(admission.source_key(raw), now), MAX_RECV_PER_WAKEUP)
        for raw in admitted:
            got = self._sock.parse(raw)
            if got is None:
                continue
            if stun.is_stun(got.payload):
                if self._netcheck is not None:
                    self._netcheck.receive_stun(got.payload, got.src, now)
            elif disco.looks_like_disco(got.payload):
                self._on_disco(got.payload, got.src, now)
        if refused:
            self._pause_reading()
            self._loop.call_later(FLOOD_PAUSE_S, self._resume_reading)
        if admitted:
            self._service()

    def _pause_reading(self) -> None:
        if self._reading and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    def _resume_reading(self) -> None:
        if not self._reading and self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._reading = True

    def _on_disco(self, data: bytes, src: AddrPort, now: float) -> None:
        assert self._box is not None
        try:
            sender, msg = self._box.open(data, self._by_disco)
        except disco.DiscoError as exc:
            self._dropped += 1
            if self._dropped % DROP_LOG_EVERY == 1:
                log.debug("dropped disco packet from %s: %s (%d dropped)", src, exc, self._dropped)
            return
        name = self._by_disco.get(sender)
        peer = self._peers.get(name) if name else None
        if peer is None:
            return
        peer.heard_at = now
        if isinstance(msg, disco.Pong):
            fut = self._manual_pings.get(msg.txid)
            if fut is not None and not fut.done():
                fut.set_result(now)
                return
        peer.heard = True
        peer.paths.receive_disco(msg, src, now)

    # --- peers without an agent (a server that only runs `meshctl sync` from cron) ---------

    def _resolve_static(self, name: str, endpoints: tuple[str, ...]) -> None:
        from meshctl.agent.endpoints import resolve_endpoint

        async def resolve() -> None:
            for text in endpoints:
                resolved = await asyncio.to_thread(resolve_endpoint, text)
                peer = self._peers.get(name)
                if resolved and peer is not None:
                    peer.static = resolved
                    return

        asyncio.get_running_loop().create_task(resolve())

    def _on_link_static(self, peer: Peer) -> str | None:
        """The peer's first literal static endpoint when it is on one of our subnets (module
        docstring: safe for WireGuard before any probe)."""
        return next((str(e) for e in literal_endpoints(peer) if on_link(e, self._local_ifaces)), None)

    def static_fallback(self, name: str) -> str | None:
        """The static endpoint WireGuard may use before (or without) a proven path: at once when
        it is on one of our subnets; else for a peer that never spoke disco, after a while: it
        runs no agent (e.g. a server synced from cron with a public address), so no probe can
        ever prove a path to it, and WireGuard's own handshake to its published endpoint is the
        only way in."""
        p = self._peers.get(name)
        if p is None or self._loop is None:
            return None
        if self._netmap is not None and (peer := self._netmap.peer(name)) is not None:
            if (near := self._on_link_static(peer)) is not None:
                return near
        if p.record is not None and not p.record.agent:
            # its record says no agent runs there (`meshctl sync` from cron): no probe will ever
            # be answered, and nothing of it can be poisoned, since it never sends first
            return p.static or unproven_candidate(p.record_candidates, self._local_ifaces)
        if p.heard or p.static is None:
            return None
        if self._loop.time() - p.created < STATIC_FALLBACK_AFTER_S:
            return None
        return p.static

    async def _resolve_stun(self, specs: tuple[str, ...]) -> None:
        try:
            resolved, failed = await asyncio.to_thread(netcheck.resolve_servers, specs)
        except ParseError as exc:
            log.warning("bad STUN server in the coordination state: %s", exc)
            return
        for spec, why in failed:
            log.warning("STUN server %s: %s", spec, why)
        if specs == self._stun_specs:
            self._stun_servers = resolved
            self._update_kernel_filter()
            self._next_restun = 0.0  # now
            if not resolved:
                self._settle_stun()
            self._service()

    def _settle_stun(self) -> None:
        if not self._stun_settled:
            self._stun_settled = True
            self._sync_peers()
            self._request_pass()  # our record can be published now, and the peers looked for

    async def _refresh_local(self, update_candidates: bool = False) -> None:
        try:
            self._local_ifaces = await asyncio.to_thread(local_ipv4_interfaces, self.settings.interface)
        except (OSError, MeshctlError) as exc:
            log.warning("cannot list local addresses: %s", exc)
        if update_candidates and self._loop is not None:
            self._set_candidates(self._loop.time())  # no STUN: the local addresses are our candidates

    def _refresh_local_only(self, now: float) -> list[float]:
        """A mesh that lists no STUN servers (a LAN): our candidates are our local addresses,
        looked at again every RESTUN_INTERVAL_S."""
        assert self._loop is not None
        if now >= self._next_restun:
            self._next_restun = now + RESTUN_INTERVAL_S
            self._loop.create_task(self._refresh_local(update_candidates=True))
        return [self._next_restun]

    def _set_candidates(self, now: float) -> None:
        new = own_candidates((i.ip for i in self._local_ifaces), self.settings.listen_port, self._report)
        if new != self._candidates:
            log.info("own endpoints: %s", " ".join(map(str, new)) or "(none)")
            self._candidates = new  # handed to each peer's core by _service
            self._request_pass()  # ... and published in our endpoint record by the next pass

    def _netcheck_step(self, now: float) -> list[float]:
        """Drive the netcheck core; returns its deadlines."""
        if self._netcheck is None and self._stun_servers and now >= self._next_restun:
            assert self._loop is not None
            self._loop.create_task(self._refresh_local())  # used from the next report on
            self._netcheck = netcheck.Netcheck(self._stun_servers, now, os.urandom, NETCHECK_TIMEOUT_S)
        nc = self._netcheck
        if nc is None:
            return [self._next_restun] if self._stun_servers else self._refresh_local_only(now)
        for payload, dst in nc.datagrams_to_send(now):
            self._send(payload, dst)
        if nc.done(now):
            self._apply_report(nc.report(), now)
            self._netcheck = None
            self._next_restun = now + RESTUN_INTERVAL_S
            return [self._next_restun]
        deadline = nc.next_deadline()
        return [deadline] if deadline is not None else []

    def _apply_report(self, report: netcheck.NetcheckReport, now: float) -> None:
        old = self._report
        self._report = report
        hard = bool(report.mapping_varies_by_dest)
        if old is None or (old.udp, old.mapping_varies_by_dest) != (report.udp, report.mapping_varies_by_dest):
            log.info("netcheck: udp %s, mapping varies by destination %s, preferred %s",
                     report.udp, report.mapping_varies_by_dest, report.preferred_endpoint)
        if hard != self._nat_hard:
            self._nat_hard = hard
            for p in self._peers.values():
                p.paths.set_our_nat_hard(hard)
        self._set_candidates(now)
        self._settle_stun()

    def _service(self) -> None:
        """Flush every core's output, act on its events, and re-arm the single timer."""
        if self._loop is None or self._sock is None:
            return
        now = self._loop.time()
        deadlines = self._netcheck_step(now)
        if not self._stun_settled:
            if now >= self._started_at + STUN_FIRST_MAX_WAIT_S:
                log.info("no netcheck result after %.0f s: setting up peers anyway", STUN_FIRST_MAX_WAIT_S)
                self._settle_stun()
            else:
                deadlines.append(self._started_at + STUN_FIRST_MAX_WAIT_S)
        need_pass = False
        for peer in self._peers.values():
            if peer.told != self._candidates:
                # call-me-maybe is a real packet: like the pings, it waits for our punches
                if now >= peer.created + PUNCH_LEAD_S:
                    peer.told = self._candidates
                    peer.paths.set_local_endpoints(self._candidates, now)
                else:
                    deadlines.append(peer.created + PUNCH_LEAD_S)
            for out in peer.paths.datagrams_to_send(now):
                if isinstance(out, SendPunch):
                    self._sock.punch(out.dst, out.ttl)
                elif isinstance(out, SendDisco):
                    self._send_disco(peer, out.msg, out.dst)
            while (event := peer.paths.next_event()) is not None:
                self._on_event(peer, event, now)
            want = wanted_override(peer.paths.path, peer.paths.initiator, peer.direct_since, now)
            if want != peer.override and want is not None:
                peer.override = want
                need_pass = True
            if peer.direct_since is not None and peer.override is None:
                deadlines.append(peer.direct_since + NON_INITIATOR_DELAY_S)
            deadlines.append(peer.paths.next_deadline())
        if need_pass:
            self._request_pass()
        self._arm(min(deadlines, default=now + RESTUN_INTERVAL_S))

    def _on_event(self, peer: _Peer, event: PathChanged | NoDirectPath, now: float) -> None:
        match event:
            case PathChanged(path, initiator):
                if (path.kind is PathKind.NONE) != (peer.kind is PathKind.NONE):
                    self._request_pass()  # the agent looks for endpoint records faster while a peer has none
                peer.kind = path.kind
                if path.kind is PathKind.DIRECT:
                    log.info("%s: path -> direct %s (%.1f ms%s)", peer.name, path.endpoint,
                             (path.latency_s or 0) * 1000, ", we initiate" if initiator else "")
                    peer.direct_since = now
                    peer.no_direct_reported = False
                else:
                    log.info("%s: path -> %s", peer.name, path.kind.value)
                    peer.direct_since = None
                    # keep the last endpoint in WireGuard: it may still work, and a later
                    # direct path overwrites it
            case NoDirectPath(candidates, probing_for_s):
                if not peer.no_direct_reported:
                    peer.no_direct_reported = True
                    log.info("%s: no direct path after %.0f s (%d candidates)", peer.name,
                             probing_for_s, candidates)

    def _arm(self, deadline: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            if abs(self._timer.when() - deadline) < 1e-3:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(max(deadline, self._loop.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._service()


def describe_ping(reply: Mapping[str, Any]) -> str:
    """The `meshctl ping` line, like `tailscale ping`."""
    who = f"{reply.get('peer')} ({reply.get('ip')})" if reply.get("ip") else str(reply.get("peer"))
    if reply.get("relay"):
        via = f"relay {reply['relay']}"
    else:
        via = f"direct {reply.get('endpoint')}"
    return f"pong from {who} via {via} in {float(reply.get('latency_ms') or 0):.1f}ms"
