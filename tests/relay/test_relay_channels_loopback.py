"""Relay channels on loopback: the real server, real clients, plain UDP sockets in WireGuard's place.

Each "WireGuard" here is a UDP socket of the test: it sends the bind (as meshctl's raw socket
would, from WireGuard's port) and then data straight to its channel port on the relay.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from relay_support import Inbox, RelayMesh, client_for, http_get, relay_config, running, wait_for

from meshctl.relay import channels as ch
from meshctl.relay.client import RelayClient
from meshctl.relay.server_core import Limits
from meshctl.udp import mmsg
from meshctl.udp.sockets import set_buffers


def _wireguard_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_buffers(sock)  # the test reads only after sending everything
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]] | None:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), timeout)
    except TimeoutError:
        return None


async def _close(socks: tuple[socket.socket, ...], clients: tuple[RelayClient, ...]) -> None:
    for sock in socks:
        sock.close()
    for client in clients:
        await client.stop()


async def _ready_pair(server: object, mesh: RelayMesh) -> tuple[RelayClient, RelayClient, socket.socket,
                                                                 socket.socket, int, int]:
    alpha, bravo = mesh.devices["alpha"], mesh.devices["bravo"]
    ca = client_for(server, mesh, alpha, Inbox())  # type: ignore[arg-type]
    cb = client_for(server, mesh, bravo, Inbox())  # type: ignore[arg-type]
    for c in (ca, cb):
        await c.start()
        assert await c.wait_connected(5)
    assert ca.request_channel(bravo.wireguard.public())
    assert await wait_for(lambda: alpha.wireguard.public().raw in cb.channels
                          and bravo.wireguard.public().raw in ca.channels, 5)
    offer_a = ca.channels[bravo.wireguard.public().raw]
    offer_b = cb.channels[alpha.wireguard.public().raw]
    assert offer_a.state is ch.ChannelState.OFFERED and offer_a.port != offer_b.port
    wg_a, wg_b = _wireguard_socket(), _wireguard_socket()
    relay_ip = ca.relay_ip
    assert relay_ip == "127.0.0.1"
    wg_a.sendto(ch.marshal_bind(offer_a.bind_token), (relay_ip, offer_a.port))
    wg_b.sendto(ch.marshal_bind(offer_b.bind_token), (relay_ip, offer_b.port))
    assert await wait_for(lambda: ca.channels[bravo.wireguard.public().raw].state is ch.ChannelState.READY
                          and cb.channels[alpha.wireguard.public().raw].state is ch.ChannelState.READY, 5)
    return ca, cb, wg_a, wg_b, offer_a.port, offer_b.port


def test_wireguard_packets_cross_a_channel_both_ways(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            ca, cb, wg_a, wg_b, port_a, port_b = await _ready_pair(server, relay_mesh)
            # A -> relay:port_a arrives at B from relay:port_b (what B's WireGuard has as A's endpoint).
            got = []
            for i in range(200):
                wg_a.sendto(b"\x04\x00\x00\x00" + bytes([i % 256]) * 1400, ("127.0.0.1", port_a))
                if i % 50 == 49:  # in rounds: an unprivileged test socket has a small buffer
                    while len(got) <= i:
                        item = await _recv(wg_b)
                        assert item is not None, f"only {len(got)} of {i + 1} packets crossed the channel"
                        got.append(item)
            assert {src for _, src in got} == {("127.0.0.1", port_b)}
            assert got[5][0] == b"\x04\x00\x00\x00" + bytes([5]) * 1400
            wg_b.sendto(b"\x02\x00\x00\x00reply", ("127.0.0.1", port_b))
            assert await _recv(wg_a) == (b"\x02\x00\x00\x00reply", ("127.0.0.1", port_a))

            # A stranger on the same port is not forwarded, nor is a bind with a wrong token.
            stranger = _wireguard_socket()
            stranger.sendto(b"\x04\x00\x00\x00intruder", ("127.0.0.1", port_a))
            stranger.sendto(ch.marshal_bind(bytes(16)), ("127.0.0.1", port_a))
            assert await _recv(wg_b, 0.5) is None

            assert server.metrics_addr is not None
            text = await http_get(server.metrics_addr, "/metrics")
            assert "meshctl_relay_channels 1\n" in text
            assert 'meshctl_relay_channel_packets_total{direction="out"} 201\n' in text
            assert 'meshctl_relay_channel_events_total{event="refused_bad_token"} 1\n' in text
            assert 'meshctl_relay_channel_events_total{event="refused_stray"} 1\n' in text
            await _close((wg_a, wg_b, stranger), (ca, cb))

    asyncio.run(scenario())


def test_a_rebound_address_takes_the_channel_with_it(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            ca, cb, wg_a, wg_b, port_a, port_b = await _ready_pair(server, relay_mesh)
            token_a = ca.channels[relay_mesh.devices["bravo"].wireguard.public().raw].bind_token
            moved = _wireguard_socket()  # A's NAT gave WireGuard a new port
            moved.sendto(b"\x04lost", ("127.0.0.1", port_a))
            assert await _recv(wg_b, 0.5) is None
            moved.sendto(ch.marshal_bind(token_a), ("127.0.0.1", port_a))
            await asyncio.sleep(0.1)
            moved.sendto(b"\x04found", ("127.0.0.1", port_a))
            assert await _recv(wg_b) == (b"\x04found", ("127.0.0.1", port_b))
            wg_b.sendto(b"\x04back", ("127.0.0.1", port_b))
            assert await _recv(moved) == (b"\x04back", ("127.0.0.1", port_a))
            await _close((wg_a, wg_b, moved), (ca, cb))

    asyncio.run(scenario())


def test_leaving_closes_the_channel_and_its_ports(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            ca, cb, wg_a, wg_b, port_a, port_b = await _ready_pair(server, relay_mesh)
            alpha = relay_mesh.devices["alpha"].wireguard.public()
            assert server.ports.open_ports == 2
            await ca.stop()  # Close frame: the relay forgets alpha now
            assert await wait_for(lambda: alpha.raw not in cb.channels, 5)
            assert server.ports.open_ports == 0 and len(server.core.channels) == 0
            wg_b.sendto(b"\x04nobody", ("127.0.0.1", port_b))
            assert await _recv(wg_a, 0.5) is None
            await _close((wg_a, wg_b), (cb,))

    asyncio.run(scenario())


def test_a_flooding_member_is_rate_limited_on_its_channel(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    """The per-member bucket of frames applies to channel traffic too."""
    limits = Limits(rate_bytes_per_s=100_000, burst_bytes=20_000)

    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path, limits=limits)) as server:
            ca, cb, wg_a, wg_b, port_a, port_b = await _ready_pair(server, relay_mesh)
            for _ in range(300):  # 300 KB at once: far past the 20 KB burst
                wg_a.sendto(b"\x04" + bytes(999), ("127.0.0.1", port_a))
                await asyncio.sleep(0)
            received = 0
            while await _recv(wg_b, 0.3) is not None:
                received += 1
            assert 10 <= received < 150, received
            assert server.core.stats.drops.get("channel_rate_limited", 0) > 0
            await _close((wg_a, wg_b), (ca, cb))

    asyncio.run(scenario())


def test_batch_io_moves_datagrams_between_connected_sockets() -> None:
    """mmsg.Batch on its own: one recvmmsg, one sendmmsg, lengths kept."""
    assert mmsg.available(), "recvmmsg/sendmmsg must load from libc on Linux"
    src, mid_in, mid_out, dst = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4))
    for s in (src, mid_in, mid_out, dst):
        s.bind(("127.0.0.1", 0))
    mid_in.connect(src.getsockname())
    mid_out.connect(dst.getsockname())
    mid_in.setblocking(False)
    dst.settimeout(2)
    sizes = [1, 100, 1420, 9000, 65_000]
    for size in sizes:
        src.sendto(bytes([size % 251]) * size, mid_in.getsockname())
    batch = mmsg.Batch(slots=8)
    n = 0
    for _ in range(100):
        n = batch.recv(mid_in.fileno())
        if n:
            break
    assert n == len(sizes)
    assert batch.payload(2) == bytes([1420 % 251]) * 1420
    assert batch.prepare_send(n) == sum(sizes)
    assert batch.send(mid_out.fileno(), n) == n
    assert [len(dst.recv(65535)) for _ in sizes] == sizes
    assert batch.recv(mid_in.fileno()) == 0  # nothing queued: no error
    for s in (src, mid_in, mid_out, dst):
        s.close()


def _flood_channel(port: int, token: bytes, seconds: float, result: object) -> None:
    """Bind the channel port to this process's socket with the member's token, then flood it."""
    import time

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.sendto(ch.marshal_bind(token), ("127.0.0.1", port))
    time.sleep(0.2)
    sock.setblocking(False)
    payload, sent = b"\x04" + bytes(1399), 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            try:
                sock.sendto(payload, ("127.0.0.1", port))
                sent += 1
            except BlockingIOError:
                pass
    result.put(sent)  # type: ignore[attr-defined]


def test_a_flood_on_one_channel_does_not_starve_another(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    """alpha floods its channel to bravo from another process; charlie's channel to bravo keeps
    every packet: each channel port has its own socket and queue, and a wake-up reads a bounded
    number of batches from each."""
    import multiprocessing

    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            ca, cb, wg_a, wg_b, port_a, _ = await _ready_pair(server, relay_mesh)
            bravo, charlie = relay_mesh.devices["bravo"], relay_mesh.devices["charlie"]
            cc = client_for(server, relay_mesh, charlie, Inbox())
            await cc.start()
            assert await cc.wait_connected(5)
            assert cc.request_channel(bravo.wireguard.public())
            assert await wait_for(lambda: bravo.wireguard.public().raw in cc.channels
                                  and charlie.wireguard.public().raw in cb.channels, 5)
            offer_c = cc.channels[bravo.wireguard.public().raw]
            offer_bc = cb.channels[charlie.wireguard.public().raw]
            wg_c, wg_bc = _wireguard_socket(), _wireguard_socket()
            wg_c.sendto(ch.marshal_bind(offer_c.bind_token), ("127.0.0.1", offer_c.port))
            wg_bc.sendto(ch.marshal_bind(offer_bc.bind_token), ("127.0.0.1", offer_bc.port))
            assert await wait_for(lambda: cc.channel_endpoint(bravo.wireguard.public()) is not None, 5)

            token_a = ca.channels[bravo.wireguard.public().raw].bind_token
            ctx = multiprocessing.get_context("fork")
            result = ctx.Queue()
            flooder = ctx.Process(target=_flood_channel, args=(port_a, token_a, 3.0, result))
            flooder.start()
            try:
                await asyncio.sleep(0.7)  # the flood is on
                got = 0
                for i in range(100):
                    wg_c.sendto(b"\x04victim" + bytes([i]), ("127.0.0.1", offer_c.port))
                    await asyncio.sleep(0.01)
                    while (item := await _recv(wg_bc, 0.001)) is not None:
                        got += item[0].startswith(b"\x04victim")
                while (item := await _recv(wg_bc, 0.5)) is not None:
                    got += item[0].startswith(b"\x04victim")
            finally:
                flooder.join(10)
            sent = result.get(timeout=5)
            flooded = server.core.stats.channel_packets_in
            print(f"flood: {sent} sent, {flooded} read by the relay; victim: {got}/100 delivered")
            assert sent > 10_000, "the flood did not happen"
            assert got == 100, f"the flood starved the other channel: {got}/100"
            await _close((wg_a, wg_b, wg_c, wg_bc), (ca, cb, cc))

    asyncio.run(scenario())
