"""The agent's relay clients and relayed data path (shell).

- one `RelayClient` per relay listed in the map (each reconnects with backoff by itself);
  the home relay is the connected one with the lowest latency (`choose_home`);
- one `RelayProxy`: a loopback UDP socket per relayed peer, WireGuard's endpoint for it
  while it is relayed without a channel;
- one receive entry point for whatever a relay brings (`_on_packet`): disco goes to the path
  engine, everything else is WireGuard's and goes through the peer's proxy socket.

Which relay carries a packet: the one the peer was last heard on (recently), else every
connected relay (the relays do not forward to each other, so a peer is reachable only on
relays it is connected to; until it answers, asking all of them is the only way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from meshctl.coord.netmap import NetMap, Relay
from meshctl.identity import DeviceKeys
from meshctl.keys import NodePublic
from meshctl.nat import disco
from meshctl.relay.channels import ChannelState
from meshctl.relay.client import RelayClient, RelayClientConfig, choose_home
from meshctl.relay.proxy import RelayProxy
from meshctl.relay.wire import ChannelInfo

log = logging.getLogger(__name__)

HEARD_FRESH_S: Final = 15.0  # a relay the peer used this recently is where it listens
RELAY_TRANSPORTS: Final = ("udp", "tcp")

T = TypeVar("T")


def route_targets(heard: T | None, heard_ago_s: float | None, connected: Sequence[T]) -> list[T]:
    """Where to send a packet for a peer: the relay it was last heard on, while that is recent
    and connected; else every connected relay (no relay forwards to another)."""
    if heard is not None and heard in connected and heard_ago_s is not None and heard_ago_s <= HEARD_FRESH_S:
        return [heard]
    return list(connected)


def relay_for_status(heard_on: str | None, heard_ago_s: float | None, home: str | None) -> str | None:
    """The relay to name for a relayed peer: where it was last heard (recently), else home."""
    if heard_on is not None and heard_ago_s is not None and heard_ago_s <= HEARD_FRESH_S:
        return heard_on
    return home


def usable_relays(relays: Sequence[Relay]) -> list[Relay]:
    """The listed relays a node may use: each must prove its identity key at login, so a relay
    listed without one (by an older meshctl) is never used, whoever answers at its address."""
    return [r for r in relays if r.identity_key is not None]


def relay_key(r: Relay) -> tuple[str, str, str | None]:
    """A listed relay's identity: a change of address or key is another relay."""
    return (r.name, r.address, r.identity_key.text() if r.identity_key is not None else None)


class RelayLinks:
    """Relay clients, routing and the loopback proxy, for the path engine."""

    def __init__(self, keys: DeviceKeys, wg_port: int, *, on_disco: Callable[[NodePublic, bytes], None],
                 on_proxied: Callable[[NodePublic], None], on_ready: Callable[[NodePublic], None],
                 on_change: Callable[[], None]) -> None:
        """`on_disco`: a sealed disco packet a relay brought; `on_proxied`: a WireGuard packet of a
        peer went into WireGuard through its proxy; `on_ready`: a relay said a peer's channel is
        READY; `on_change`: a client (dis)connected or a channel changed."""
        self._keys = keys
        self._on_disco = on_disco
        self._on_proxied = on_proxied
        self._on_ready = on_ready
        self._on_change = on_change
        self.proxy = RelayProxy(self.send, wg_port)
        self._clients: dict[tuple[str, str, str | None], RelayClient] = {}
        self._heard: dict[bytes, tuple[RelayClient, float]] = {}  # peer key -> relay last heard on, when
        self._keyless_warned: set[str] = set()  # relays listed without a key, warned about once
        self._peers: Mapping[bytes, object] = {}  # the keys of the map's peers
        self._home: RelayClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the set of relays and of peers -----------------------------------------------------

    def update(self, netmap: NetMap, peers: Mapping[bytes, object]) -> None:
        """Follow the map: a client per listed relay; forget peers that left."""
        self._peers = peers
        for raw in [k for k in self._heard if k not in peers]:
            del self._heard[raw]
        for peer in list(self.proxy.peers()):
            if peer.raw not in peers:
                self.proxy.remove(peer)
        wanted = {relay_key(r): r for r in usable_relays(netmap.relays)}
        for r in netmap.relays:
            if r.identity_key is None and r.name not in self._keyless_warned:
                self._keyless_warned.add(r.name)
                log.warning("relay %s is listed without its identity key: not used (an admin lists it again "
                            "with `meshctl admin relay add --identity-key`)", r.name)
        for listed in list(self._clients):
            if listed not in wanted:
                log.info("relay %s: no longer listed", listed[0])
                self._spawn(self._clients.pop(listed).stop())
        for listed, r in wanted.items():
            if listed in self._clients:
                continue
            config = RelayClientConfig(r.address, netmap.network.network_id, relay_name=r.name,
                                       relay_key=r.identity_key, transports=RELAY_TRANSPORTS)
            client = RelayClient(config, self._keys.identity, self._keys.wireguard.public(),
                                 lambda src, data: None, on_state=self._state_changed,
                                 on_channel=self._channel_changed)
            client.on_packet = self._receiver(client)
            self._clients[listed] = client
            self._spawn(client.start())

    async def stop(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            with contextlib.suppress(Exception):
                await c.stop()
        self.proxy.close()

    @property
    def listed(self) -> bool:
        return bool(self._clients)

    @property
    def up(self) -> bool:
        return any(c.connected for c in self._clients.values())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def home(self) -> RelayClient | None:
        """The connected relay with the lowest latency (kept unless another is clearly faster)."""
        home = choose_home(list(self._clients.values()), self._home)
        if home is not self._home:
            log.info("home relay: %s", home.config.relay_name if home is not None else "none")
            self._home = home
        return home

    def _state_changed(self, connected: bool) -> None:
        self._on_change()

    def _channel_changed(self, info: ChannelInfo) -> None:
        if info.state is ChannelState.READY:
            self._on_ready(info.peer)
        self._on_change()

    # --- receive: the one entry point for what relays bring -------------------------------

    def _receiver(self, client: RelayClient) -> Callable[[NodePublic, bytes], None]:
        magic = disco.MAGIC
        heard = self._heard

        def on_packet(src: NodePublic, payload: bytes) -> None:
            if src.raw not in self._peers:
                return  # not a peer of our map (yet): nothing to hand it to
            entry = heard.get(src.raw)
            now = time.monotonic()
            if entry is None or entry[0] is not client or now - entry[1] > 1.0:
                heard[src.raw] = (client, now)  # refreshed at most once a second: the hot path
            if payload[: len(magic)] == magic:
                self._on_disco(src, payload)
            else:
                self.proxy.deliver(src, payload)
                self._on_proxied(src)

        return on_packet

    # --- send ------------------------------------------------------------------------------

    def route(self, dst: NodePublic) -> list[RelayClient]:
        """The relay clients to send a packet for `dst` through (module docstring)."""
        connected = [c for c in self._clients.values() if c.connected]
        entry = self._heard.get(dst.raw)
        if entry is None:
            return connected
        return route_targets(entry[0], time.monotonic() - entry[1], connected)

    def send(self, dst: NodePublic, payload: bytes) -> bool:
        sent = False
        for client in self.route(dst):
            sent = client.send(dst, payload) or sent
        return sent

    # --- what the engine and status ask -----------------------------------------------------

    def channel_client(self, key: NodePublic) -> RelayClient | None:
        """The client a channel to `key` is asked of and bound through: the first on its route."""
        client = next(iter(self.route(key)), None)
        return client if client is not None and client.relay_ip is not None else None

    def relay_of(self, key: NodePublic) -> str | None:
        entry = self._heard.get(key.raw)
        home_client = self.home
        home = home_client.config.relay_name if home_client is not None else None
        if entry is None:
            return home
        return relay_for_status(entry[0].config.relay_name, time.monotonic() - entry[1], home)

    def status(self) -> dict[str, Any]:
        home = self.home
        return {"relays": [c.status() for c in self._clients.values()],
                "home_relay": home.config.relay_name if home is not None else None}
