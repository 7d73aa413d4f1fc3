"""The loopback proxy between WireGuard and the relay client (real sockets; WireGuard faked by
plain UDP sockets here; the netns test uses wireguard-go)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
from relay_support import RelayMesh, client_for, relay_config, running, wait_for

from meshctl.keys import NodePrivate
from meshctl.relay.proxy import RelayProxy
from meshctl.udp import sockets


def fake_wireguard() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def test_proxy_carries_packets_both_ways_through_the_relay(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            alpha, bravo = relay_mesh.devices["alpha"], relay_mesh.devices["bravo"]
            ka, kb = alpha.wireguard.public(), bravo.wireguard.public()
            wg_a, wg_b = fake_wireguard(), fake_wireguard()
            proxies: dict[str, RelayProxy] = {}
            ca = client_for(server, relay_mesh, alpha, lambda s, d: proxies["a"].deliver(s, d))  # type: ignore[arg-type]
            cb = client_for(server, relay_mesh, bravo, lambda s, d: proxies["b"].deliver(s, d))  # type: ignore[arg-type]
            proxies["a"] = RelayProxy(ca.send, wg_a.getsockname()[1])
            proxies["b"] = RelayProxy(cb.send, wg_b.getsockname()[1], auto_create=True)
            await ca.start()
            await cb.start()
            assert await ca.wait_connected(5) and await cb.wait_connected(5)
            ep_b_at_a = proxies["a"].endpoint_for(kb)
            assert ep_b_at_a.startswith("127.0.0.1:") and proxies["a"].endpoint_for(kb) == ep_b_at_a
            host, port = ep_b_at_a.rsplit(":", 1)
            # "WireGuard" on a sends a handshake initiation to b's endpoint.
            await loop.sock_sendto(wg_a, b"\x01\x00\x00\x00initiation", (host, int(port)))
            data, src = await asyncio.wait_for(loop.sock_recvfrom(wg_b, 2048), 5)
            assert data == b"\x01\x00\x00\x00initiation"
            # b's proxy made an endpoint for a on the fly: b's WireGuard sees the packet from it.
            ep_a_at_b = proxies["b"].peers()[ka]
            assert f"{src[0]}:{src[1]}" == ep_a_at_b
            await loop.sock_sendto(wg_b, b"\x02\x00\x00\x00response", src)
            data, src2 = await asyncio.wait_for(loop.sock_recvfrom(wg_a, 2048), 5)
            assert data == b"\x02\x00\x00\x00response" and f"{src2[0]}:{src2[1]}" == ep_b_at_a
            # Only WireGuard's own port may use an endpoint: a stranger on loopback is dropped.
            stranger = fake_wireguard()
            before = proxies["a"].stats.to_relay
            await loop.sock_sendto(stranger, b"\x04spoof", (host, int(port)))
            assert await wait_for(lambda: proxies["a"].stats.dropped >= 1, 2)
            assert proxies["a"].stats.to_relay == before
            # Removing the peer closes its socket.
            proxies["a"].remove(kb)
            assert kb not in proxies["a"].peers()
            for c in (ca, cb):
                await c.stop()
            for p in proxies.values():
                p.close()
            for s in (wg_a, wg_b, stranger):
                s.close()

    asyncio.run(scenario())


def test_proxy_sockets_get_large_buffers() -> None:
    async def scenario() -> None:
        proxy = RelayProxy(lambda k, d: True, 9)
        peer = NodePrivate.generate().public()
        proxy.endpoint_for(peer)
        sock = proxy._peers[peer].sock
        rcv = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        snd = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        proxy.close()
        if os.geteuid() != 0:
            pytest.skip("needs root for SO_RCVBUFFORCE past net.core.rmem_max")
        # The kernel reports twice what was asked for.
        assert rcv >= sockets.BUFFER_BYTES and snd >= sockets.BUFFER_BYTES

    asyncio.run(scenario())


def test_unknown_source_without_auto_create_is_dropped() -> None:
    async def scenario() -> None:
        proxy = RelayProxy(lambda k, d: True, 9, auto_create=False)
        proxy.deliver(NodePrivate.generate().public(), b"x")
        assert proxy.stats.dropped == 1 and proxy.peers() == {}

    asyncio.run(scenario())

