"""A standalone relayed data path for one device: RelayClient + RelayProxy, no agent (shell).

For labs, benchmarks and debugging a relay by hand: WireGuard is configured with `wg set`,
each relayed peer's endpoint being the loopback address this tool prints.

    python -m lab.relay_peer --relay 203.0.113.10:3340 --network-id ID \\
        --identity-key keys/identity.key --wg-key keys/wireguard.key --wg-port 51820 \\
        --peer <peer wg public key> [--peer ...] --out endpoints.json [--channels]

endpoints.json: {"endpoints": {peer_b64: "127.0.0.1:PORT"}, "channels": {peer_b64: "RELAY_IP:PORT"},
"connected": bool, "transport": ...}, rewritten on every change. With --channels (root: a raw
socket) the tool asks the relay for a channel to each peer and binds it from WireGuard's port;
"channels" lists those that are READY, to use as WireGuard endpoints instead of the proxy's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
from pathlib import Path

from meshctl.fsutil import atomic_write
from meshctl.keys import NodePublic, VerifyKey, load_node_private, load_signing_key
from meshctl.nat.addr import parse_addr_port
from meshctl.nat.rawsock import SharedPortSocket
from meshctl.relay.channels import BIND_INTERVAL_S, ChannelState, marshal_bind
from meshctl.relay.client import RelayClient, RelayClientConfig
from meshctl.relay.proxy import RelayProxy
from meshctl.relay.wire import ChannelInfo


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lab.relay_peer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", required=True, help="HOST:PORT of the relay")
    ap.add_argument("--network-id", required=True)
    ap.add_argument("--relay-name")
    ap.add_argument("--relay-key", help="ed25519:... the relay must prove")
    ap.add_argument("--identity-key", required=True, type=Path, help="this device's identity key file")
    ap.add_argument("--wg-key", required=True, type=Path, help="this device's WireGuard private key file")
    ap.add_argument("--wg-port", required=True, type=int, help="WireGuard's listen port on loopback")
    ap.add_argument("--peer", action="append", default=[], help="a relayed peer's WireGuard public key")
    ap.add_argument("--transports", default="udp,tcp")
    ap.add_argument("--tls-ca", type=Path, help="CA file: use TLS for the TCP fallback")
    ap.add_argument("--channels", action="store_true", help="ask for channels and bind them (needs root)")
    ap.add_argument("--out", required=True, type=Path)
    return ap


async def run(args: argparse.Namespace) -> None:
    identity = load_signing_key(args.identity_key)
    wg_pub = load_node_private(args.wg_key).public()
    tls = ssl.create_default_context(cafile=str(args.tls_ca)) if args.tls_ca else None
    config = RelayClientConfig(args.relay, args.network_id, relay_name=args.relay_name,
                               relay_key=VerifyKey.from_text(args.relay_key) if args.relay_key else None,
                               transports=tuple(args.transports.split(",")), tls=tls)
    proxy: RelayProxy | None = None
    peers = [NodePublic.from_b64(text) for text in args.peer]
    raw = SharedPortSocket(args.wg_port) if args.channels else None

    def on_packet(src: NodePublic, payload: bytes) -> None:
        if proxy is not None:
            proxy.deliver(src, payload)

    def bind(info: ChannelInfo) -> None:
        if raw is not None and client.relay_ip is not None and info.state is not ChannelState.CLOSED:
            raw.send(marshal_bind(info.bind_token), parse_addr_port(f"{client.relay_ip}:{info.port}"))

    def write_state(_changed: object = None) -> None:
        if isinstance(_changed, ChannelInfo):
            bind(_changed)
        channels = {k.b64(): ep for k in peers if (ep := client.channel_endpoint(k)) is not None}
        doc = {"endpoints": {k.b64(): v for k, v in (proxy.peers() if proxy else {}).items()},
               "channels": channels, "connected": client.connected, "transport": client.transport,
               "connects": client.connects}
        atomic_write(args.out, json.dumps(doc).encode())

    async def keep_channels() -> None:
        while True:
            for peer in peers:
                info = client.channels.get(peer.raw)
                if info is None:
                    client.request_channel(peer)
                else:
                    bind(info)
            await asyncio.sleep(BIND_INTERVAL_S if all(k.raw in client.channels for k in peers) else 1.0)

    client = RelayClient(config, identity, wg_pub, on_packet, on_state=write_state, on_channel=write_state)
    proxy = RelayProxy(client.send, args.wg_port)
    for peer in peers:
        proxy.endpoint_for(peer)
    write_state()
    await client.start()
    keeper = asyncio.create_task(keep_channels()) if raw is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if keeper is not None:
            keeper.cancel()
        await client.stop()
        proxy.close()
        if raw is not None:
            raw.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
