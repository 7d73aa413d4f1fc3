"""The path engine: which way each peer's WireGuard packets go, decided per peer on events (shell).

Like Tailscale's magicsock, but meshctl is never in the data path of a direct connection: it
finds a path to each peer and hands it to WireGuard as the peer's endpoint.

What it owns (all driven by the agent's asyncio loop; one timer, no polling):
- one `rawsock.SharedPortSocket` on WireGuard's listen port: STUN, disco, TTL-2 punches and
  relay channel binds leave from that port, so they learn and open WireGuard's own mapping.
  Its BPF program lets in disco only from the map's keys and STUN only from the servers we
  ask; `_on_readable` admits every packet by its source (nat/admission.py: per-source token
  buckets, a shared one for sources we never sent to) before anything is parsed or unsealed,
  and pauses reading FLOOD_PAUSE_S after a wakeup that refused some (a flood costs a batched
  read every few milliseconds, not a wakeup per packet); `receive()` is then the one entry
  point for what was admitted (STUN answers, disco);
- `OwnEndpoints` (own.py): STUN refresh and local addresses, our candidates;
- `RelayLinks` (relays.py): relay clients, the loopback proxy, disco over relays;
- one `PeerRecord` (record.py) per peer of the map, holding its sans-IO `paths.PeerPaths`
  (direct paths), its relay and channel state and what WireGuard was told.

Events: a datagram (a pong, a ping, call-me-maybe, a STUN answer), a relayed disco packet, a
relay client's state or a channel's READY, a new map, the devices' endpoint records fetched
from the git host (their fresh candidates go to the peers' cores like a call-me-maybe; a
record saying no agent runs there makes its endpoint usable at once), a static endpoint resolved, and the
single timer, armed at the earliest deadline any part asked for (probes, heartbeats, STUN
refresh, channel binds, and the moments a choice may change by itself: `Choice.recheck_at`).
After each, the affected records are served: their outputs sent, their events logged, and
`choose_endpoint` (choose.py, pure) run. A changed endpoint goes to WireGuard at once as a
WireGuard-only update (`apply_endpoints`), and again REASSERT_AFTER_S later: WireGuard roams
to wherever the peer's packets come from, so while the two sides switch one after the
other it may roam back to the path being left. A peer on a relay channel whose packet comes
through the proxy has roamed off the channel for certain: its endpoint is written again at
once (at most every ROAM_REASSERT_S). The agent's full pass, for a new map, uses `endpoints()`.
The engine asks the agent for a pass (`request_pass`) only when our own endpoint record would
say something new (our first netcheck settled, our candidates changed: the pass publishes it)
or when a peer gains or loses every path (the agent then looks for records sooner).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any, Final

from meshctl.agent.desired import KEEPALIVE_S
from meshctl.agent.paths.choose import Via, choose_endpoint
from meshctl.agent.paths.own import OwnEndpoints, nat_status
from meshctl.agent.paths.record import PeerRecord, on_link, record_candidates, record_text, unproven_candidate
from meshctl.agent.paths.relays import RelayLinks
from meshctl.coord.endpoint_publish import PublishRequest
from meshctl.coord.endpoint_record import EndpointRecord
from meshctl.coord.netmap import NetMap
from meshctl.coord.routes import Liveness
from meshctl.identity import DeviceKeys, load_device_keys
from meshctl.keys import DiscoPublic, NodePublic
from meshctl.nat import admission, disco, stun
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.paths import NoDirectPath, PathChanged, PathKind, PeerPaths, SendDisco, SendPunch
from meshctl.relay.channels import BIND_INTERVAL_S, marshal_bind
from meshctl.settings import Settings

log = logging.getLogger(__name__)

# The first pings to a peer's candidates follow our TTL-2 punches by this much, so a peer
# starting at about the same time has punched its own NAT before our pings reach it.
PUNCH_LEAD_S: Final = 0.3
# Peers get their direct-path cores only after the first netcheck, or this long after start
# without one: its STUN packets must leave our port before any packet towards a peer (on a
# plain Linux masquerade NAT a new flow reuses the mapping of the newest live flow).
STUN_FIRST_MAX_WAIT_S: Final = 3.0
REASSERT_AFTER_S: Final = 3.0  # an endpoint change is written again this much later
ROAM_REASSERT_S: Final = 1.0  # at most this often, a write that undoes a roam away from a channel
CHANNEL_RETRY_S: Final = 15.0  # ask for a channel again this long after a request (refused, unanswered)
# While a channel is not confirmed for the current relayed spell: bind this often, ask this often
# (the relay answers READY only if a bind from us arrived in the last few seconds; relay/channels.py).
CHANNEL_CONFIRM_BIND_S: Final = 1.0
CHANNEL_CONFIRM_ASK_S: Final = 2.0
PING_TIMEOUT_S: Final = 1.0  # `meshctl ping`: one attempt
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

EndpointWrites = dict[bytes, tuple[str, int]]  # peer key -> (endpoint, keepalive)
RELAYED_SEEN_AS: Final = AddrPort(ipaddress.IPv4Address("127.3.3.40"), 0)  # a pong's "seen as" over a relay


def path_status(rec: PeerRecord, relay: str | None) -> dict[str, Any]:
    """The per-peer part of the status document: where WireGuard's packets go."""
    path = rec.paths.path if rec.paths is not None else None
    via = rec.choice.via
    relayed = via in (Via.RELAY, Via.CHANNEL)
    return {
        "path": via.path,
        "endpoint": rec.choice.endpoint if not relayed else None,
        "relay": relay if relayed else None,
        "relay_channel": rec.choice.endpoint if via is Via.CHANNEL else None,
        "latency_ms": round(path.latency_s * 1000, 3) if path is not None and path.latency_s is not None
        and via is Via.DIRECT else None,
    }


def peer_liveness(direct: bool, heard_at: float | None, first_seen: float, now: float) -> Liveness:
    """See PathEngine.liveness."""
    if direct or (heard_at is not None and now - heard_at < HEARD_ALIVE_S):
        return Liveness.ALIVE
    if heard_at is None and now - first_seen < LIVENESS_GRACE_S:
        return Liveness.UNKNOWN
    return Liveness.DEAD


def describe_ping(reply: Mapping[str, Any]) -> str:
    """The `meshctl ping` line, like `tailscale ping`: which path answered, and how fast."""
    who = f"{reply.get('peer')} ({reply.get('ip')})" if reply.get("ip") else str(reply.get("peer"))
    if reply.get("path") == "relay":
        via = f"relay {reply.get('relay')}"
    else:
        via = f"direct {reply.get('endpoint')}"
    return f"pong from {who} via {via} in {float(reply.get('latency_ms') or 0):.1f}ms"


class PathEngine:
    """The agent extension (daemon.Extension) for NAT traversal, relays and endpoints."""

    def __init__(self, settings: Settings, apply_endpoints: Callable[[EndpointWrites], None],
                 device_endpoint: Callable[[NodePublic], str | None] = lambda key: None,
                 request_pass: Callable[[], None] = lambda: None) -> None:
        """`apply_endpoints`: write endpoints to WireGuard (alone); `device_endpoint`: the endpoint
        WireGuard uses for a peer now (blocking: called in a thread), for a ping when the engine
        knows no path yet but WireGuard found one by itself; `request_pass`: a pass soon (it
        publishes our endpoint record, and looks for records while a peer has no path)."""
        self.settings = settings
        self._apply_endpoints = apply_endpoints
        self._device_endpoint = device_endpoint
        self._request_pass = request_pass
        self._endpoint_records: Mapping[str, EndpointRecord] = {}  # the devices' records (git host)
        # (settled, candidates) of our own endpoints when a pass was last asked to publish them
        self._published_as: tuple[bool, tuple[AddrPort, ...]] = (False, ())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: DeviceKeys | None = None
        self._our_key: NodePublic | None = None
        self._sock: Any = None  # rawsock.SharedPortSocket, opened in start()
        self._box: disco.DiscoBox | None = None
        self._own: OwnEndpoints | None = None
        self._relays: RelayLinks | None = None
        self._netmap: NetMap | None = None
        self._records: dict[str, PeerRecord] = {}
        self._by_key: dict[bytes, PeerRecord] = {}
        self._by_disco: dict[DiscoPublic, PeerRecord] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._relay_up = False
        self._on_channel: set[str] = set()  # peers whose choice is a channel (the proxy's hot path checks it)
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        self._pending: EndpointWrites = {}
        self._dropped = 0
        self._endpoints: dict[str, str | None] = {}
        self._admission = admission.Admission()
        self._kernel_filter: tuple[tuple[bytes, ...], tuple[AddrPort, ...]] | None = None
        self._reading = False

    # --- lifecycle (daemon.Extension) ----------------------------------------------------

    async def start(self) -> None:
        from meshctl.nat.rawsock import SharedPortSocket

        self._keys = load_device_keys(self.settings.keys_dir)
        self._our_key = self._keys.wireguard.public()
        self._box = disco.DiscoBox(self._keys.disco, os.urandom)
        self._sock = SharedPortSocket(self.settings.listen_port)
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self._resume_reading()
        self._own = OwnEndpoints(self.settings.interface, self.settings.listen_port, self._send_raw,
                                 self._own_changed)
        await self._own.refresh_local()
        self._relays = RelayLinks(self._keys, self.settings.listen_port, on_disco=self._on_relayed_disco,
                                  on_proxied=self._on_proxied, on_ready=self._channel_ready, on_change=self._poke)
        log.info("path engine on port %d (disco %s)", self.settings.listen_port, self._box.public.short())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._relays is not None:
            await self._relays.stop()
        if self._sock is not None and self._loop is not None:
            self._pause_reading()
            self._sock.close()
            self._sock = None
        for fut in self._pings.values():
            fut.cancel()

    def update_netmap(self, netmap: NetMap) -> None:
        """A new map (or the same one again): records for its peers, clients for its relays."""
        if self._loop is None or self._own is None or self._relays is None:
            return
        self._netmap = netmap
        now = self._loop.time()
        wanted = {p.name: p for p in netmap.others()}
        for name in list(self._records):
            p = wanted.get(name)
            if p is None or not self._records[name].same_peer(p):
                del self._records[name]
                self._endpoints.pop(name, None)
                self._on_channel.discard(name)
                log.info("%s: forgotten (left the map or changed keys)", name)
        for name, p in wanted.items():
            rec = self._records.get(name)
            if rec is None:
                rec = self._records[name] = PeerRecord.of(p, now)
                if p.endpoints:
                    self._resolve_static(rec, p.endpoints)
            elif rec.paths is not None:
                rec.paths.add_static_endpoints(rec.literal_statics, now)
            rec.on_link_static = next((str(e) for e in rec.literal_statics if on_link(e, self._own.local)), None)
        self._apply_records(now)
        self._by_key = {r.wg_key.raw: r for r in self._records.values()}
        self._by_disco = {r.disco_key: r for r in self._records.values()}
        self._relays.update(netmap, self._by_key)
        self._own.set_servers(tuple(netmap.stun_servers))
        self._update_kernel_filter()
        self._service(set(self._records))

    def _update_kernel_filter(self) -> None:
        """Disco only from the map's keys, STUN only from the servers we ask: in the kernel."""
        keys = tuple(sorted(r.disco_key.raw for r in self._records.values()))
        wanted = (keys, tuple(s.addr for s in self._own.servers) if self._own else ())
        if wanted != self._kernel_filter and self._sock is not None:
            self._sock.set_filter(*wanted)
            self._kernel_filter = wanted

    # --- endpoint records through the git host (issue 18) -----------------------------------

    def update_endpoints(self, records: Mapping[str, EndpointRecord]) -> frozenset[str]:
        """The devices' records as a pass fetched them; returns the peers whose usable candidates
        changed (new to try: the agent looks for records faster again)."""
        self._endpoint_records = records
        if self._loop is None:
            return frozenset()
        changed, moved = self._apply_records(self._loop.time())
        self._service(moved)
        return changed

    def _apply_records(self, now: float) -> tuple[frozenset[str], set[str]]:
        """Each peer's record: its fresh candidates to its core (none once stale), and whether it
        says no agent runs there. Returns (candidates changed, records whose choice may move)."""
        wall = int(time.time())
        local = self._own.local if self._own is not None else []
        changed: set[str] = set()
        moved: set[str] = set()
        for rec in self._records.values():
            er = self._endpoint_records.get(rec.name)
            usable = record_candidates(er, rec.wg_key, rec.disco_key, wall) if er is not None else ()
            if usable != rec.record_candidates:
                if usable:
                    log.info("%s: endpoint record: %s", rec.name, " ".join(map(str, usable)))
                rec.record_candidates = usable
                if rec.paths is not None:
                    rec.paths.set_record_candidates(usable, now)
                changed.add(rec.name)
            before = rec.no_agent_endpoint()
            rec.endpoint_record = er
            rec.unproven = unproven_candidate(usable, local)
            if rec.no_agent_endpoint() != before:
                moved.add(rec.name)
        return frozenset(changed), moved | changed

    def publish_request(self) -> PublishRequest | None:
        """What our own endpoint record would say now; None until the first netcheck settled
        (publishing the local addresses alone would cost a second push a second later)."""
        if self._own is None or not self._own.settled or self._loop is None:
            return None
        looking = any(r.record_candidates and r.pathless for r in self._records.values())
        return PublishRequest(record_text(self._own.candidates), agent=True, someone_looking=looking)

    def pathless(self) -> frozenset[str]:
        """Peers with no path at all (no direct path, no relay): the agent looks for their records."""
        return frozenset(n for n, r in self._records.items() if r.pathless)

    def _ask_pass_if_published_moved(self) -> None:
        """Our record would say something new (first netcheck settled, candidates changed): a pass publishes it."""
        if self._own is None:
            return
        now_as = (self._own.settled, self._own.candidates)
        if now_as != self._published_as:
            self._published_as = now_as
            if self._own.settled:
                self._request_pass()

    def endpoints(self) -> dict[str, str | None]:
        """Every peer's endpoint as chosen now (None: leave WireGuard alone), for a full pass."""
        return dict(self._endpoints)

    # --- the one receive entry point for the WireGuard port --------------------------------

    def _on_readable(self) -> None:
        """Admit by source first (nothing refused is parsed, unsealed or answered), then receive."""
        assert self._loop is not None
        if self._sock is None:
            return
        now = self._loop.time()
        admitted, refused = self._sock.recv_admitted(
            lambda raw: self._admission.admit(admission.source_key(raw), now), MAX_RECV_PER_WAKEUP)
        touched: set[str] = set()
        moved: set[str] = set()
        for raw in admitted:
            got = self._sock.parse(raw)
            heard = self.receive(got.payload, got.src, now) if got is not None else None
            if heard is not None:
                rec, inputs_moved = heard
                touched.add(rec.name)
                if inputs_moved:
                    moved.add(rec.name)
        if refused:
            self._pause_reading()
            self._loop.call_later(FLOOD_PAUSE_S, self._resume_reading)
        if admitted:
            self._service(moved, touched)

    def _pause_reading(self) -> None:
        if self._reading and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._reading = False

    def _resume_reading(self) -> None:
        if not self._reading and self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._reading = True

    def receive(self, payload: bytes, src: AddrPort, now: float) -> tuple[PeerRecord, bool] | None:
        """A STUN or disco datagram that arrived on WireGuard's port; the record it reached, and
        whether it changed what the record's choice reads (see _on_disco)."""
        if stun.is_stun(payload):
            if self._own is not None:
                self._own.receive_stun(payload, src, now)
            return None
        if disco.looks_like_disco(payload):
            return self._on_disco(payload, src, now)
        return None

    def _open(self, data: bytes, src: object) -> tuple[PeerRecord, disco.DiscoMessage] | None:
        assert self._box is not None
        try:
            sender, msg = self._box.open(data, self._by_disco)
        except disco.DiscoError as exc:
            self._dropped += 1
            if self._dropped % DROP_LOG_EVERY == 1:
                log.debug("dropped disco packet from %s: %s (%d dropped)", src, exc, self._dropped)
            return None
        rec = self._by_disco.get(sender)
        return (rec, msg) if rec is not None else None

    def _on_disco(self, data: bytes, src: AddrPort, now: float) -> tuple[PeerRecord, bool] | None:
        opened = self._open(data, src)
        if opened is None:
            return None
        rec, msg = opened
        rec.heard_at = now
        if isinstance(msg, disco.Pong):
            fut = self._pings.get(msg.txid)
            if fut is not None and not fut.done():
                fut.set_result(now)
                return None
        before = (rec.heard, rec.paths.initiator if rec.paths is not None else None)
        rec.heard = True
        if rec.paths is not None:
            rec.paths.receive_disco(msg, src, now)
        # What the choice reads and a packet can change without a path event (those decide anyway):
        # the first disco heard, who initiates. A heartbeat's ping or pong changes neither.
        return rec, before != (rec.heard, rec.paths.initiator if rec.paths is not None else None)

    def _on_relayed_disco(self, src: NodePublic, data: bytes) -> None:
        """A sealed disco packet a relay brought from WireGuard key `src` (relay-attested)."""
        if self._loop is None:
            return
        opened = self._open(data, "relay")
        if opened is None or opened[0].wg_key != src:
            return  # the disco key must belong to the member the relay logged in
        rec, msg = opened
        now = self._loop.time()
        rec.heard_at = now  # sealed by its disco key, brought by the relay that logged it in: it lives
        if isinstance(msg, disco.Ping):
            # `meshctl ping` over the relay: answered there; it proves no direct path
            if msg.node_key == rec.wg_key:
                self._send_disco(rec, disco.Pong(msg.txid, RELAYED_SEEN_AS), None)
            return
        if isinstance(msg, disco.Pong):
            fut = self._pings.get(msg.txid)
            if fut is not None and not fut.done():
                fut.set_result(now)
            return  # a pong over the relay proves nothing about a direct path
        rec.heard = True
        if rec.paths is not None:
            rec.paths.receive_disco(msg, None, now)
        self._service({rec.name})

    def _on_proxied(self, src: NodePublic) -> None:
        """A WireGuard packet of `src` came through its proxy: off its channel, if it was on one."""
        if not self._on_channel or self._loop is None:
            return
        rec = self._by_key.get(src.raw)
        now = self._loop.time()
        if rec is not None and rec.choice.via is Via.CHANNEL and now - rec.reasserted_at >= ROAM_REASSERT_S:
            rec.reasserted_at = now
            rec.written = None  # WireGuard roamed: write the channel again
            self._service({rec.name})

    def _poke(self) -> None:
        """Something every peer's choice may depend on changed (a relay, our candidates)."""
        if self._loop is not None:
            self._loop.call_soon(self._service, set(self._records))

    def _own_changed(self) -> None:
        """New STUN servers resolved, a netcheck report, new local candidates: the kernel filter,
        every peer, and our endpoint record."""
        self._update_kernel_filter()
        self._ask_pass_if_published_moved()
        self._poke()

    # --- sending -------------------------------------------------------------------------

    def _send_raw(self, payload: bytes, dst: AddrPort) -> bool:
        """A disco or STUN packet from WireGuard's port: what comes back from `dst` is expected."""
        if self._sock is None or self._loop is None:
            return False
        self._admission.expect(dst, self._loop.time())
        return bool(self._sock.send(payload, dst))

    def _send_disco(self, rec: PeerRecord, msg: disco.DiscoMessage, dst: AddrPort | None) -> None:
        assert self._box is not None
        data = self._box.seal(msg, rec.disco_key)
        if dst is not None:
            self._send_raw(data, dst)
        elif self._relays is not None:
            self._relays.send(rec.wg_key, data)

    # --- serving records: outputs, events, choices, the timer -----------------------------

    def _service(self, dirty: set[str], touched: set[str] | frozenset[str] = frozenset()) -> None:
        """Serve the records that are due, `dirty` ones (their choice may move: decide again) and
        `touched` ones (a packet came: their outputs, and a decision only if their core's path moved)."""
        if self._loop is None or self._own is None or self._relays is None or self._sock is None:
            return
        now = self._loop.time()
        own = self._own
        deadlines = [d for d in (own.step(now),) if d is not None]
        if not own.settled:
            if now >= self._started_at + STUN_FIRST_MAX_WAIT_S:
                log.info("no netcheck result after %.0f s: setting up peers anyway", STUN_FIRST_MAX_WAIT_S)
                own.settled = True
                self._ask_pass_if_published_moved()
                dirty = set(self._records)
            else:
                deadlines.append(self._started_at + STUN_FIRST_MAX_WAIT_S)
        relay_up = self._relays.up
        if relay_up != self._relay_up:
            self._relay_up = relay_up
            dirty = set(self._records)
        for rec in self._records.values():
            # Only records something happened to, or whose time has come: a packet for one peer
            # costs one record's work, not every peer's.
            if rec.name in dirty or rec.name in touched or rec.next_due <= now:
                rec.next_due = min(self._serve(rec, now, rec.name in dirty, relay_up), default=float("inf"))
            deadlines.append(rec.next_due)
        self._flush()
        self._arm(min(deadlines, default=now + 60.0))

    def _serve(self, rec: PeerRecord, now: float, dirty: bool, relay_up: bool) -> list[float]:
        """One record: its core's outputs and events, then its choice if anything moved."""
        own = self._own
        assert own is not None and self._our_key is not None
        deadlines: list[float] = []
        paths = rec.paths
        if paths is None and own.settled:
            paths = rec.paths = PeerPaths(self._our_key, rec.wg_key, now, os.urandom,
                                          static_endpoints=rec.literal_statics, relay_available=relay_up,
                                          our_nat_hard=own.hard, first_probe_delay_s=PUNCH_LEAD_S,
                                          wall_clock_offset_s=time.time() - now)
            rec.paths_since = now
            if rec.record_candidates:
                paths.set_record_candidates(rec.record_candidates, now)
            dirty = True
        if paths is not None:
            paths.set_our_nat_hard(own.hard)
            if rec.told != own.candidates:
                # call-me-maybe is a real packet: like the pings, it waits for our punches
                lead = rec.paths_since + PUNCH_LEAD_S
                if now >= lead:
                    rec.told = own.candidates
                    paths.set_local_endpoints(own.candidates, now)
                else:
                    deadlines.append(lead)
            for _ in range(2):  # again when the relay flag made the core say something
                for out in paths.datagrams_to_send(now):
                    if isinstance(out, SendPunch):
                        self._sock.punch(out.dst, out.ttl)
                    elif isinstance(out, SendDisco):
                        self._send_disco(rec, out.msg, out.dst)
                while (event := paths.next_event()) is not None:
                    dirty = self._on_path_event(rec, event, now) or dirty
                # Without a direct path the core's path is the relay exactly while one is up.
                kind = paths.path.kind
                if not ((kind is PathKind.NONE and relay_up) or (kind is PathKind.RELAY and not relay_up)):
                    break
                paths.set_relay_available(relay_up, now)
            deadlines.append(paths.next_deadline())
        due = [d for d in (rec.choice.recheck_at, rec.reassert_at) if d is not None]
        if dirty or any(d <= now for d in due) or rec.relayed_since is not None:
            deadlines += self._decide(rec, now, relay_up)
        else:
            deadlines += due
        return deadlines

    def _on_path_event(self, rec: PeerRecord, event: PathChanged | NoDirectPath, now: float) -> bool:
        match event:
            case PathChanged(path, initiator):
                if (path.kind is PathKind.NONE) != (rec.kind is PathKind.NONE):
                    self._request_pass()  # the agent looks for endpoint records faster while a peer has none
                rec.kind = path.kind
                if path.kind is PathKind.DIRECT:
                    log.info("%s: path -> direct %s (%.1f ms%s)", rec.name, path.endpoint,
                             (path.latency_s or 0) * 1000, ", we initiate" if initiator else "")
                    rec.direct_since = now
                    rec.no_direct_reported = False
                else:
                    log.info("%s: path -> %s", rec.name, path.kind.value)
                    rec.direct_since = None
                return True
            case NoDirectPath(candidates, probing_for_s):
                if not rec.no_direct_reported:
                    rec.no_direct_reported = True
                    log.info("%s: no direct path after %.0f s (%d candidates)", rec.name, probing_for_s, candidates)
                return False
        return False

    def _decide(self, rec: PeerRecord, now: float, relay_up: bool) -> list[float]:
        """Run choose_endpoint for `rec` and hand a changed endpoint to WireGuard."""
        assert self._own is not None and self._our_key is not None and self._relays is not None
        facts = rec.facts(self._our_key, self._own.hard, self._relays.listed, relay_up)
        choice = choose_endpoint(facts, now)
        deadlines: list[float] = []
        if choice.via in (Via.RELAY, Via.CHANNEL):
            if rec.relayed_since is None:
                rec.relayed_since = now
            channel, deadlines = self._keep_channel(rec, now)
            if channel != rec.channel:
                rec.channel = channel
                choice = choose_endpoint(replace(facts, channel=channel), now)
        else:
            rec.relayed_since, rec.channel = None, None
        rec.choice = choice
        if choice.via is Via.CHANNEL:
            self._on_channel.add(rec.name)
        else:
            self._on_channel.discard(rec.name)
        endpoint = choice.endpoint
        if choice.via is Via.RELAY:
            endpoint = self._relays.proxy.endpoint_for(rec.wg_key)  # opened only for a relayed peer
            rec.proxied = True
        elif choice.via is Via.DIRECT:
            rec.last_direct = endpoint
        self._endpoints[rec.name] = endpoint
        if endpoint is not None and (rec.written is None or rec.written[0] != endpoint):
            log.info("endpoints: %s -> %s (%s)", rec.name, endpoint, choice.via.value)
            self._write(rec, endpoint)
            rec.reassert_at = now + REASSERT_AFTER_S
        elif rec.reassert_at is not None and now >= rec.reassert_at:
            rec.reassert_at = None
            if endpoint is not None:
                self._write(rec, endpoint)
        deadlines += [d for d in (choice.recheck_at, rec.reassert_at) if d is not None]
        return deadlines

    def _write(self, rec: PeerRecord, endpoint: str) -> None:
        rec.written = (endpoint, KEEPALIVE_S)
        self._pending[rec.wg_key.raw] = rec.written

    def _flush(self) -> None:
        if self._pending:
            writes, self._pending = self._pending, {}
            self._apply_endpoints(writes)

    def _keep_channel(self, rec: PeerRecord, now: float) -> tuple[str | None, list[float]]:
        """Ask for, bind and keep a channel to a relayed peer: its endpoint once READY in this
        relayed spell (one bound before a direct path died may be cut off by the same block:
        until READY is heard again, bind often and ask again)."""
        assert self._relays is not None
        client = self._relays.channel_client(rec.wg_key)
        if client is None or client.relay_ip is None:
            return None, []
        info = client.channels.get(rec.wg_key.raw)
        if info is None:
            if now - rec.channel_asked_at >= CHANNEL_RETRY_S:
                rec.channel_asked_at = now
                client.request_channel(rec.wg_key)
            return None, [rec.channel_asked_at + CHANNEL_RETRY_S]
        endpoint = client.channel_endpoint(rec.wg_key)  # None unless the relay's last word was READY
        confirmed = endpoint is not None and rec.relayed_since is not None and rec.ready_at >= rec.relayed_since
        interval = BIND_INTERVAL_S if confirmed else CHANNEL_CONFIRM_BIND_S
        target = (client.relay_ip, info.port, info.bind_token)
        last_bind = rec.bound[3] if rec.bound is not None and rec.bound[:3] == target else float("-inf")
        if now - last_bind >= interval and ":" not in client.relay_ip:
            if self._sock is not None:  # a bind, not a question: nothing comes back on the raw socket
                self._sock.send(marshal_bind(info.bind_token), parse_addr_port(f"{client.relay_ip}:{info.port}"))
            last_bind = now
            rec.bound = (*target, now)
        deadlines = [last_bind + interval]
        if not confirmed:
            if now - rec.channel_asked_at >= CHANNEL_CONFIRM_ASK_S:
                rec.channel_asked_at = now
                client.request_channel(rec.wg_key)
            deadlines.append(rec.channel_asked_at + CHANNEL_CONFIRM_ASK_S)
        return (endpoint if confirmed else None), deadlines

    def _channel_ready(self, peer: NodePublic) -> None:
        """A relay said `peer`'s channel is READY."""
        rec = self._by_key.get(peer.raw)
        if rec is not None and self._loop is not None:
            rec.ready_at = self._loop.time()
            log.info("%s: relay channel READY", rec.name)

    def _arm(self, deadline: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            if abs(self._timer.when() - deadline) < 1e-3:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(max(deadline, self._loop.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._service(set())

    # --- static endpoints (peers without an agent) -------------------------------------------

    def _resolve_static(self, rec: PeerRecord, texts: tuple[str, ...]) -> None:
        from meshctl.agent.endpoints import resolve_endpoint

        async def resolve() -> None:
            for text in texts:
                resolved = await asyncio.to_thread(resolve_endpoint, text)
                if resolved and self._records.get(rec.name) is rec:
                    rec.static = resolved
                    self._service({rec.name})
                    return

        asyncio.get_running_loop().create_task(resolve())

    # --- liveness, for HA routers of subnet routes (agent/failover.py) -----------------------

    def is_direct(self, name: str) -> bool:
        rec = self._records.get(name)
        return rec is not None and rec.paths is not None and rec.paths.path.kind is PathKind.DIRECT

    def liveness(self, name: str) -> Liveness:
        """Whether a peer's agent answers: a direct path is alive by its heartbeats (3 s; dead after
        about 8 s without pongs, nat/paths.py); otherwise any disco heard from it in the last
        HEARD_ALIVE_S (the failover monitor pings relayed routers); UNKNOWN while it is new, DEAD
        after that."""
        rec = self._records.get(name)
        if rec is None or self._loop is None:
            return Liveness.UNKNOWN
        return peer_liveness(self.is_direct(name), rec.heard_at, rec.first_seen, self._loop.time())

    async def ping_via_relay(self, name: str, timeout_s: float) -> float | None:
        """One disco round trip over the relay: seconds, or None without an answer."""
        rec = self._records.get(name)
        if rec is None or self._relays is None:
            return None
        return await self._round_trip(rec, None, timeout_s)

    async def _round_trip(self, rec: PeerRecord, dst: AddrPort | None, timeout_s: float) -> float | None:
        """One disco ping to `dst` (None: over the relays) and its pong: seconds, or None."""
        if self._loop is None or self._our_key is None:
            return None
        txid = os.urandom(disco.TXID_LEN)
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[txid] = fut
        sent_at = self._loop.time()
        self._send_disco(rec, disco.Ping(txid, self._our_key), dst)
        try:
            return await asyncio.wait_for(fut, timeout_s) - sent_at
        except TimeoutError:
            return None
        finally:
            self._pings.pop(txid, None)

    # --- status and ping ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        own, relays = self._own, self._relays
        doc: dict[str, Any] = {
            "paths": {name: path_status(rec, relays.relay_of(rec.wg_key) if relays else None)
                      for name, rec in self._records.items()},
            "endpoints": [str(c) for c in own.candidates] if own else [],
            "nat": {**nat_status(own.report if own else None), "admission": asdict(self._admission.counts)},
        }
        if relays is not None:
            doc.update(relays.status())
        return doc

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if request.get("cmd") != "ping":
            return None
        return await self.ping(str(request.get("peer", "")))

    async def ping(self, target: str) -> dict[str, Any]:
        """One disco round trip on the path WireGuard uses now; the reply names that path."""
        rec = next((r for r in self._records.values() if target in (r.name, r.mesh_ip)), None)
        if rec is None:
            return {"ok": False, "error": f"unknown peer {target[:64]!r}", "hint": "`meshctl status` lists the peers"}
        assert self._loop is not None and self._our_key is not None and self._relays is not None
        base = {"peer": rec.name, "ip": rec.mesh_ip}
        last_path = "none"
        for _ in range(PING_ATTEMPTS):
            where = path_status(rec, self._relays.relay_of(rec.wg_key))
            if where["path"] == "none":  # no path known here: WireGuard may have found one (the peer's handshake)
                roamed = await asyncio.to_thread(self._device_endpoint, rec.wg_key)
                if roamed is None or roamed.startswith("127."):
                    return {**base, "ok": False, "path": "none", **self._no_path(rec)}
                where = {**where, "path": "direct", "endpoint": roamed}
            last_path = where["path"]
            dst = parse_addr_port(where["endpoint"]) if where["path"] == "direct" else None
            rtt = await self._round_trip(rec, dst, PING_TIMEOUT_S)
            if rtt is not None:
                return {**base, "ok": True, **where, "latency_ms": round(rtt * 1000, 3)}
        return {**base, "ok": False, "path": last_path,
                "error": f"no pong from {rec.name} after {PING_ATTEMPTS} pings over its {last_path} path"}

    def _no_path(self, rec: PeerRecord) -> dict[str, str]:
        assert self._relays is not None
        probed = len(rec.paths.candidates()) if rec.paths is not None else 0
        if not self._relays.listed:
            return {"error": f"no path to {rec.name}: no direct path found ({probed} candidates probed) "
                             "and no relay is listed",
                    "hint": "both NATs may be hard (symmetric): list a relay with `meshctl admin relay add`"}
        return {"error": f"no path to {rec.name}: no direct path found ({probed} candidates probed) "
                         "and no relay connected",
                "hint": "is `meshctl relay` running on the relay host, and reachable from here?"}

