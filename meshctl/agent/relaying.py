"""Relaying: the agent's relay clients and relayed data path, around Magic (shell).

An agent Extension that wraps the NAT-traversal engine (`magic.Magic`) and adds what
issue 5 asks of the agent:

- one `RelayClient` per relay listed in the NetMap (each reconnects with backoff by
  itself); the home relay is the connected one with the lowest latency (`choose_home`);
- one `RelayProxy`: a loopback UDP socket per peer that WireGuard uses as that peer's
  endpoint while the peer is relayed;
- disco over the relay: Magic's `send_via_relay` seam sends sealed disco (call-me-maybe,
  so hole punching starts through the relay), and disco arriving from a relay goes to
  `Magic.receive_relayed_disco`; everything else from a relay is WireGuard's.

Endpoint policy (`decide_endpoint`, pure): a direct path Magic has proven wins; otherwise,
when relays are listed, the peer's proxy endpoint, at once for the designated WireGuard
initiator and RELAY_NON_INITIATOR_DELAY_S later for the other side (two handshakes at
once cost WireGuard a 5 s retry; the initiator's packet usually arrives first and
WireGuard roams to the proxy by itself). With no relay listed, Magic decides alone.
A peer is first given its proxy once a relay is connected (`offer_proxy`): WireGuard's
first handshake sent into a relay not yet reachable is lost, and WireGuard retries only 5 s
later, even when a direct path has been found in between. Once given, the proxy endpoint
stays while a relay is down: packets to it are dropped, which costs only the relayed path,
and the flow resumes as soon as a client reconnects.

Which relay carries a packet: the one the peer was last heard on (recently), else every
connected relay (the relays do not forward to each other, so a peer is reachable only on
relays it is connected to; until it answers, asking all of them is the only way).

Channels (relay/channels.py): the proxy puts meshctl in the relayed data path, so for a
relayed peer the agent also asks that relay for a channel, binds it from WireGuard's port
(Magic's raw socket) every BIND_INTERVAL_S, and once the relay says READY, WireGuard's
endpoint for the peer is the relay's channel port itself: one hop at the relay, none in
meshctl. The proxy stays the way in until then, and again whenever the channel closes
(the relay restarted, the session dropped), so a relayed flow never waits for a channel.

Magic's path state changes inside its own timer; a cheap poll (EVALUATE_INTERVAL_S)
turns it into WireGuard endpoints and tells Magic's per-peer cores whether a relay is
up. A change of endpoints asks the agent for a pass, and again REASSERT_AFTER_S later:
WireGuard roams to wherever the peer's packets come from, so while the two sides switch
one after the other it may roam back to the path being left. For a channel that is seen
for certain: a packet from the peer arrives through the proxy while WireGuard should be on
the channel. Then the poll asks for a pass (at most every ROAM_REASSERT_S): it reads the
device, finds the roamed endpoint and writes the channel back. Without it WireGuard stayed
on the proxy until the peer's next packet came in by the channel, with an idle tunnel up
to a keepalive (25 s) later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from meshctl.agent.magic import Magic
from meshctl.coord.endpoint_publish import PublishRequest
from meshctl.coord.endpoint_record import EndpointRecord
from meshctl.coord.netmap import NetMap, Prefix, Relay
from meshctl.keys import NodePublic
from meshctl.nat import disco
from meshctl.nat.paths import PathKind, is_designated_initiator
from meshctl.settings import Settings

log = logging.getLogger(__name__)

EVALUATE_INTERVAL_S: Final = 0.25  # path changes reach WireGuard within this
REASSERT_AFTER_S: Final = 3.0  # a second pass after an endpoint change (module docstring)
ROAM_REASSERT_S: Final = 1.0  # at most this often, a pass that undoes a roam away from a channel
RELAY_NON_INITIATOR_DELAY_S: Final = 1.0
HEARD_FRESH_S: Final = 15.0  # a relay the peer used this recently is where it listens
RELAY_PING_TIMEOUT_S: Final = 1.0
RELAY_PING_ATTEMPTS: Final = 3
RELAY_TRANSPORTS: Final = ("udp", "tcp")
CHANNEL_RETRY_S: Final = 15.0  # ask again this long after a request (refused, or not answered)
# While a channel is not confirmed for the current relayed spell: bind this often, ask this often
# (the relay answers READY only if a bind from us arrived in the last few seconds; relay/channels.py).
CHANNEL_CONFIRM_BIND_S: Final = 1.0
CHANNEL_CONFIRM_ASK_S: Final = 2.0

T = TypeVar("T")
_PROXY: Final = "relay-proxy"  # stands for the peer's proxy endpoint until it is needed


# --- pure policy ---------------------------------------------------------------------------


def decide_endpoint(direct: str | None, proxy: str | None, magic_default: str | None,
                    initiator: bool, seen_for_s: float, static_fallback: str | None = None) -> str | None:
    """The WireGuard endpoint of one peer.

    `direct`: the endpoint Magic proved (None: no direct path yet); `proxy`: this peer's
    loopback relay endpoint (None: no relay listed); `magic_default`: what Magic alone
    would write; `seen_for_s`: how long the peer has been in the map; `static_fallback`: the
    published endpoint of a peer that runs no agent (it is on no relay either).
    """
    if direct is not None:
        return direct
    if static_fallback is not None:
        return static_fallback
    if proxy is None:
        return magic_default
    if initiator or seen_for_s >= RELAY_NON_INITIATOR_DELAY_S:
        return proxy
    return magic_default


def offer_proxy(relays_listed: bool, relay_up: bool, already_proxied: bool) -> bool:
    """Whether a peer's loopback proxy may be its WireGuard endpoint (module docstring)."""
    return relays_listed and (relay_up or already_proxied)


def relay_for_status(heard_on: str | None, heard_ago_s: float | None, home: str | None) -> str | None:
    """The relay to name for a relayed peer: where it was last heard (recently), else home."""
    if heard_on is not None and heard_ago_s is not None and heard_ago_s <= HEARD_FRESH_S:
        return heard_on
    return home


def route_targets(heard: T | None, heard_ago_s: float | None, connected: Sequence[T]) -> list[T]:
    """Where to send a packet for a peer: the relay it was last heard on, while that is recent
    and connected; else every connected relay (no relay forwards to another)."""
    if heard is not None and heard in connected and heard_ago_s is not None and heard_ago_s <= HEARD_FRESH_S:
        return [heard]
    return list(connected)


def usable_relays(relays: Sequence[Relay]) -> list[Relay]:
    """The listed relays a node may use: each must prove its identity key at login, so a relay
    listed without one (by an older meshctl) is never used, whoever answers at its address."""
    return [r for r in relays if r.identity_key is not None]


def relay_key(r: Relay) -> tuple[str, str, str | None]:
    return (r.name, r.address, r.identity_key.text() if r.identity_key is not None else None)


# --- the extension -------------------------------------------------------------------------


@dataclass
class _Heard:
    client: Any  # RelayClient
    at: float


class Relaying:
    """The agent extension (daemon.Extension) for NAT traversal plus relays; wraps Magic."""

    def __init__(self, settings: Settings, request_pass: Callable[..., None], magic: Magic) -> None:
        self.settings = settings
        self._request_pass = request_pass
        self.magic = magic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keys: Any = None  # identity.DeviceKeys, loaded in start()
        self._proxy: Any = None  # relay.proxy.RelayProxy
        self._clients: dict[tuple[str, str, str | None], Any] = {}  # relay_key -> RelayClient
        self._keyless_warned: set[str] = set()  # relays listed without a key, warned about once
        self._home: Any = None
        self._heard: dict[bytes, _Heard] = {}  # peer WireGuard key (raw) -> last relay heard on
        self._netmap: NetMap | None = None
        self._by_name: dict[str, NodePublic] = {}
        self._by_key: dict[bytes, str] = {}
        self._first_seen: dict[str, float] = {}
        self._overrides: dict[str, str | None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._reassert: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel_asked: dict[str, float] = {}  # peer -> when a channel was last requested
        self._bound_at: dict[tuple[str, int, bytes], float] = {}  # (relay ip, port, token) -> last bind
        self._relayed_since: dict[str, float] = {}  # peer -> when its current relayed spell began
        self._ready_at: dict[bytes, float] = {}  # peer key -> when a relay last said its channel is READY
        self._channel_in_use: dict[str, str] = {}  # peer -> its READY channel's endpoint
        self._roamed_off_channel = False  # a peer's packet came through the proxy while on a channel
        self._roam_reasserted_at = float("-inf")

    # --- Extension hooks -------------------------------------------------------------------

    async def start(self) -> None:
        from meshctl.identity import load_device_keys
        from meshctl.relay.proxy import RelayProxy

        await self.magic.start()
        self._loop = asyncio.get_running_loop()
        self._keys = load_device_keys(self.settings.keys_dir)
        self._proxy = RelayProxy(self._send_packet, self.settings.listen_port)
        self.magic.send_via_relay = self._send_disco
        self._arm()

    async def stop(self) -> None:
        for handle in (self._timer, self._reassert):
            if handle is not None:
                handle.cancel()
        self._timer = self._reassert = None
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            with contextlib.suppress(Exception):
                await c.stop()
        if self._proxy is not None:
            self._proxy.close()
        await self.magic.stop()

    def update_netmap(self, netmap: NetMap) -> None:
        self.magic.update_netmap(netmap)
        if self._loop is None:
            return
        self._netmap = netmap
        now = self._loop.time()
        self._by_name = {p.name: p.wg_public_key for p in netmap.others()}
        self._by_key = {k.raw: n for n, k in self._by_name.items()}
        self._first_seen = {n: self._first_seen.get(n, now) for n in self._by_name}
        for per_peer in (self._channel_asked, self._channel_in_use, self._relayed_since):
            for name in [n for n in per_peer if n not in self._by_name]:
                del per_peer[name]
        for per_key in (self._heard, self._ready_at):
            for raw in [k for k in per_key if k not in self._by_key]:
                del per_key[raw]
        if self._proxy is not None:
            for key in list(self._proxy.peers()):
                if key.raw not in self._by_key:
                    self._proxy.remove(key)
        self._sync_clients(netmap)
        self._evaluate()

    def route_choices(self) -> dict[Prefix, str]:
        return {}

    def endpoint_overrides(self) -> dict[str, str | None]:
        # Called from the pass's worker thread: only a copy of what the loop computed.
        return dict(self._overrides)

    # endpoint records through the git host (daemon.Signalling): Magic's
    def update_endpoints(self, records: Mapping[str, EndpointRecord]) -> frozenset[str]:
        news = self.magic.update_endpoints(records)
        self._evaluate()  # a peer without an agent may have an endpoint now
        return news

    def publish_request(self) -> PublishRequest | None:
        return self.magic.publish_request()

    def pathless(self) -> frozenset[str]:
        return self.magic.pathless()

    def status(self) -> dict[str, Any]:
        doc = self.magic.status()
        now = time.monotonic()
        home = self._home.config.relay_name if self._home is not None else None
        paths = {name: dict(info) for name, info in doc.get("paths", {}).items()}
        proxies = set(self._proxy.peers().values()) if self._proxy is not None else set()
        relayed = proxies | set(self._channel_in_use.values())
        for name, info in paths.items():
            if info.get("path") == PathKind.DIRECT.value and self._overrides.get(name) in relayed:
                # Magic found a direct path but WireGuard still sends to the relay (the
                # non-initiator's delay, or the pass not yet applied): report where data goes.
                info["path"] = PathKind.RELAY.value
            if info.get("path") == PathKind.RELAY.value:
                key = self._by_name.get(name)
                heard = self._heard.get(key.raw) if key is not None else None
                info["relay"] = relay_for_status(heard.client.config.relay_name if heard else None,
                                                 now - heard.at if heard else None, home)
                info["endpoint"] = None
                channel = self._channel_in_use.get(name)
                in_use = channel is not None and self._overrides.get(name) == channel
                info["relay_channel"] = channel if in_use else None
        doc["paths"] = paths
        doc["relays"] = [c.status() for c in self._clients.values()]
        doc["home_relay"] = home
        return doc

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if request.get("cmd") != "ping":
            return await self.magic.handle(request)
        target = str(request.get("peer", ""))
        name = next((p.name for p in (self._netmap.others() if self._netmap else ())
                     if target in (p.name, *(str(a) for a in p.addresses))), None)
        view = self.magic.relay_view(name) if name is not None else None
        if name is not None and view is not None and view[0].kind is PathKind.NONE and self._clients:
            return {"ok": False, "peer": name, "path": "none",
                    "error": f"no path to {name}: no direct path found and no relay connected",
                    "hint": "is `meshctl relay` running on the relay host, and reachable from here?"}
        if name is None or view is None or view[0].kind is not PathKind.RELAY:
            return await self.magic.handle(request)  # direct, unknown, or no relay listed
        return await self._ping_relayed(name)

    # --- relay clients ---------------------------------------------------------------------

    def _sync_clients(self, netmap: NetMap) -> None:
        from meshctl.relay.client import RelayClient, RelayClientConfig

        wanted = {relay_key(r): r for r in usable_relays(netmap.relays)}
        for r in netmap.relays:
            if r.identity_key is None and r.name not in self._keyless_warned:
                self._keyless_warned.add(r.name)
                log.warning("relay %s is listed without its identity key: not used (an admin lists it again "
                            "with `meshctl admin relay add --identity-key`)", r.name)
        for key in list(self._clients):
            if key not in wanted:
                client = self._clients.pop(key)
                log.info("relay %s: no longer listed", key[0])
                self._spawn(client.stop())
        for key, r in wanted.items():
            if key in self._clients:
                continue
            config = RelayClientConfig(r.address, netmap.network.network_id, relay_name=r.name,
                                       relay_key=r.identity_key, transports=RELAY_TRANSPORTS)
            client = RelayClient(config, self._keys.identity, self._keys.wireguard.public(),
                                 lambda src, data: None, on_state=self._on_relay_state,
                                 on_channel=self._on_channel)
            client.on_packet = self._receiver(client)
            self._clients[key] = client
            self._spawn(client.start())

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _receiver(self, client: Any) -> Callable[[NodePublic, bytes], None]:
        magic_prefix = disco.MAGIC
        heard = self._heard
        by_key = self._by_key_view

        def on_packet(src: NodePublic, payload: bytes) -> None:
            if src.raw not in by_key():
                return  # not a peer of our map (yet): nothing to hand it to
            entry = heard.get(src.raw)
            now = time.monotonic()
            if entry is None or entry.client is not client:
                heard[src.raw] = _Heard(client, now)
            else:
                entry.at = now
            if payload[: len(magic_prefix)] == magic_prefix:
                self.magic.receive_relayed_disco(src, payload)
            elif self._proxy is not None:
                self._proxy.deliver(src, payload)
                if self._channel_in_use and by_key().get(src.raw) in self._channel_in_use:
                    self._roamed_off_channel = True  # WireGuard now sends to the proxy (docstring)

        return on_packet

    def _by_key_view(self) -> Mapping[bytes, str]:
        return self._by_key

    def _on_relay_state(self, connected: bool) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._evaluate)

    def _route(self, dst: NodePublic) -> list[Any]:
        """The relay clients to send a packet for `dst` through (see the module docstring)."""
        entry = self._heard.get(dst.raw)
        connected = [c for c in self._clients.values() if c.connected]
        if entry is None:
            return connected
        return route_targets(entry.client, time.monotonic() - entry.at, connected)

    def _send_packet(self, dst: NodePublic, payload: bytes) -> bool:
        sent = False
        for client in self._route(dst):
            sent = client.send(dst, payload) or sent
        return sent

    def _send_disco(self, peer_name: str, sealed: bytes) -> bool:
        key = self._by_name.get(peer_name)
        return key is not None and self._send_packet(key, sealed)

    async def _ping_relayed(self, name: str) -> dict[str, Any]:
        peer = self._netmap.peer(name) if self._netmap else None
        base = {"peer": name, "ip": str(peer.ipv4 or peer.ipv6) if peer and peer.addresses else None}
        for _ in range(RELAY_PING_ATTEMPTS):
            rtt = await self.magic.ping_via_relay(name, RELAY_PING_TIMEOUT_S)
            if rtt is not None:
                relay = self.status()["paths"].get(name, {}).get("relay")
                return {**base, "ok": True, "path": "relay", "endpoint": None, "relay": relay,
                        "latency_ms": round(rtt * 1000, 3)}
        return {**base, "ok": False, "path": "relay",
                "error": f"no pong from {name} over the relay after {RELAY_PING_ATTEMPTS} pings"}

    # --- channels ----------------------------------------------------------------------------

    def _use_channel(self, name: str, key: NodePublic, now: float) -> str | None:
        """Ask for, bind and keep a channel to a relayed peer; its endpoint once READY."""
        from meshctl.nat.addr import parse_addr_port
        from meshctl.relay.channels import BIND_INTERVAL_S, marshal_bind

        client = next(iter(self._route(key)), None)
        if client is None or client.relay_ip is None:
            return None
        info = client.channels.get(key.raw)
        if info is None:
            if now - self._channel_asked.get(name, -CHANNEL_RETRY_S) >= CHANNEL_RETRY_S:
                self._channel_asked[name] = now
                client.request_channel(key)
            return None
        # A channel counts once READY was heard in this relayed spell: one bound before a direct
        # path died may be cut off by the same block. Until then bind often and ask again.
        endpoint: str | None = client.channel_endpoint(key)  # None unless the relay's last word was READY
        confirmed = endpoint is not None and self._ready_at.get(key.raw, -1.0) >= self._relayed_since.get(name, now)
        interval = BIND_INTERVAL_S if confirmed else CHANNEL_CONFIRM_BIND_S
        bound = (client.relay_ip, info.port, info.bind_token)
        if now - self._bound_at.get(bound, -interval) >= interval and ":" not in client.relay_ip:
            self._bound_at[bound] = now
            self.magic.send_from_wireguard_port(marshal_bind(info.bind_token),
                                                parse_addr_port(f"{client.relay_ip}:{info.port}"))
        if not confirmed and now - self._channel_asked.get(name, -CHANNEL_CONFIRM_ASK_S) >= CHANNEL_CONFIRM_ASK_S:
            self._channel_asked[name] = now
            client.request_channel(key)
        if len(self._bound_at) > 4 * max(1, len(self._by_name)):  # forget channels long gone
            self._bound_at = {b: t for b, t in self._bound_at.items() if now - t < 2 * BIND_INTERVAL_S}
        return endpoint if confirmed else None

    def _on_channel(self, info: Any) -> None:
        from meshctl.relay.channels import ChannelState

        if info.state is ChannelState.READY and self._loop is not None:
            self._ready_at[info.peer.raw] = self._loop.time()
        self._on_relay_state(True)

    # --- the poll: paths -> relay availability and WireGuard endpoints ---------------------

    def _arm(self) -> None:
        assert self._loop is not None
        self._timer = self._loop.call_later(EVALUATE_INTERVAL_S, self._on_timer)

    def _on_timer(self) -> None:
        self._evaluate()
        self._arm()

    def _evaluate(self) -> None:
        if self._loop is None or self._netmap is None or self._keys is None:
            return
        from meshctl.relay.client import choose_home

        clients = list(self._clients.values())
        home = choose_home(clients, self._home)
        if home is not self._home:
            log.info("home relay: %s", home.config.relay_name if home is not None else "none")
            self._home = home
        relay_up = any(c.connected for c in clients)
        now = self._loop.time()
        ours = self._keys.wireguard.public()
        magic_default = self.magic.endpoint_overrides()
        proxied = self._proxy.peers() if self._proxy is not None else {}
        out: dict[str, str | None] = {}
        for name, key in self._by_name.items():
            view = self.magic.relay_view(name)
            if view is None:
                direct, initiator = None, is_designated_initiator(ours, key, False, False)
            else:
                path, direct, initiator = view
                if relay_up and path.kind is PathKind.NONE:
                    self.magic.set_relay_available(name, True)
                elif not relay_up and path.kind is PathKind.RELAY:
                    self.magic.set_relay_available(name, False)
            relayed = offer_proxy(bool(clients) and self._proxy is not None, relay_up, key in proxied)
            want = decide_endpoint(direct, _PROXY if relayed else None, magic_default.get(name), initiator,
                                   now - self._first_seen.get(name, now), self.magic.static_fallback(name))
            if want is _PROXY:
                self._relayed_since.setdefault(name, now)
            else:
                self._relayed_since.pop(name, None)
            channel = self._use_channel(name, key, now) if want is _PROXY else None
            if channel is not None:
                self._channel_in_use[name] = channel
            else:
                self._channel_in_use.pop(name, None)
            # the proxy socket is opened only for a peer that is (or was) relayed
            out[name] = channel or (self._proxy.endpoint_for(key) if want is _PROXY else want)
        if out != self._overrides:
            changed = sorted(n for n in out if out[n] != self._overrides.get(n))
            log.info("endpoints: %s", ", ".join(f"{n} -> {out[n]}" for n in changed))
            self._overrides = out
            self._request_pass()
            if self._reassert is not None:
                self._reassert.cancel()
            self._reassert = self._loop.call_later(REASSERT_AFTER_S, self._request_pass)
            self._roamed_off_channel = False
        elif self._roamed_off_channel and now - self._roam_reasserted_at >= ROAM_REASSERT_S:
            self._roamed_off_channel = False
            self._roam_reasserted_at = now
            self._request_pass()
