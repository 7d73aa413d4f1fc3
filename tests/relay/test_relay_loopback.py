"""Relay server and clients on loopback (asyncio; real git repo, real sockets, real TLS)."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import ssl
import time
from dataclasses import replace
from pathlib import Path

from relay_support import (
    Inbox,
    RelayMesh,
    client_for,
    flood,
    http_get,
    relay_config,
    running,
    self_signed_cert,
    wait_for,
)

from meshctl.keys import SigningKey
from meshctl.nat import stun
from meshctl.relay.server import RelayServer, load_or_create_identity
from meshctl.relay.server_core import Limits


def test_members_exchange_packets_over_udp_with_metrics_and_stun(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            alpha, bravo = relay_mesh.devices["alpha"], relay_mesh.devices["bravo"]
            inbox_b, inbox_a = Inbox(), Inbox()
            ca = client_for(server, relay_mesh, alpha, inbox_a)
            cb = client_for(server, relay_mesh, bravo, inbox_b)
            await ca.start()
            await cb.start()
            assert await ca.wait_connected(5) and await cb.wait_connected(5)
            assert ca.transport == "udp" and ca.relay_verified and ca.latency_s is not None
            for i in range(50):
                assert ca.send(bravo.wireguard.public(), b"\x04\x00\x00\x00" + bytes([i]) * 100)
            assert await wait_for(lambda: len(inbox_b.packets) == 50, 5)
            assert inbox_b.packets[7] == (alpha.wireguard.public(), b"\x04\x00\x00\x00" + bytes([7]) * 100)
            cb.send(alpha.wireguard.public(), b"reply")
            assert await wait_for(lambda: inbox_a.packets == [(bravo.wireguard.public(), b"reply")], 5)

            assert server.metrics_addr is not None
            text = await http_get(server.metrics_addr, "/metrics")
            assert text.startswith("HTTP/1.1 200 OK")
            assert "meshctl_relay_clients 2\n" in text
            assert "meshctl_relay_udp_client_sockets 2\n" in text  # each UDP client queues apart
            assert 'meshctl_relay_packets_total{direction="in"} 51\n' in text
            assert 'meshctl_relay_logins_total{result="ok"} 2\n' in text
            assert (await http_get(server.metrics_addr, "/other")).startswith("HTTP/1.1 404")

            # STUN on the relay's UDP port answers with our address.
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            txid = stun.new_txid(lambda n: bytes(n))
            await loop.sock_sendto(sock, stun.marshal_binding_request(txid), server.udp_addr)
            reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
            sock.close()
            got_txid, mapped = stun.parse_binding_response(reply)
            assert got_txid == txid and mapped.port == sock.getsockname()[1] if False else mapped.port > 0
            await ca.stop()
            await cb.stop()

    asyncio.run(scenario())


def test_non_member_is_refused(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    from relay_support import new_device

    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            stranger = client_for(server, relay_mesh, new_device())
            await stranger.start()
            assert await wait_for(lambda: (stranger.last_error or "").endswith("refused: auth_failed"), 5)
            assert not stranger.connected
            assert server.core.sessions == 0
            assert not stranger.send(relay_mesh.devices["alpha"].wireguard.public(), b"x")
            await stranger.stop()

    asyncio.run(scenario())


def test_revoked_member_is_dropped_by_the_next_sync(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path, sync_interval_s=1.0)) as server:
            alpha, charlie = relay_mesh.devices["alpha"], relay_mesh.devices["charlie"]
            inbox_c = Inbox()
            ca, cc = client_for(server, relay_mesh, alpha), client_for(server, relay_mesh, charlie, inbox_c)
            await ca.start()
            await cc.start()
            assert await ca.wait_connected(5) and await cc.wait_connected(5)
            ca.send(charlie.wireguard.public(), b"before")
            assert await wait_for(lambda: len(inbox_c.packets) == 1, 5)
            serial = server.netmap.serial if server.netmap else 0
            relay_mesh.revoke("charlie")
            relay_mesh.commit("revoke charlie")
            # The periodic sync (1 s here) sees the revocation and drops the session.
            assert await wait_for(lambda: not cc.connected, 10)
            assert server.netmap is not None and server.netmap.serial == serial + 1
            assert (cc.last_error or "").endswith("refused: revoked")
            ca.send(charlie.wireguard.public(), b"after")
            await asyncio.sleep(0.3)
            assert inbox_c.packets == [(alpha.wireguard.public(), b"before")]
            assert server.core.stats.drops.get("no_destination") == 1
            await ca.stop()
            await cc.stop()

    asyncio.run(scenario())


def test_tls_fallback_and_udp_client_talk(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)

    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path, tls_cert=cert, tls_key=key)) as server:
            alpha, bravo = relay_mesh.devices["alpha"], relay_mesh.devices["bravo"]
            ctx = ssl.create_default_context(cafile=str(cert))
            inbox_a, inbox_b = Inbox(), Inbox()
            ca = client_for(server, relay_mesh, alpha, inbox_a)
            cb = client_for(server, relay_mesh, bravo, inbox_b, transports=("tcp",), tls=ctx)
            await ca.start()
            await cb.start()
            assert await ca.wait_connected(5) and await cb.wait_connected(5)
            assert (ca.transport, cb.transport) == ("udp", "tcp")
            assert server.streams and all(c.transport.get_extra_info("ssl_object") is not None  # type: ignore[union-attr]
                                          for c in server.streams)
            big = bytes(range(256)) * 200  # 51 200 bytes: one frame, split by TCP/TLS records
            for _ in range(20):
                ca.send(bravo.wireguard.public(), big)
                cb.send(alpha.wireguard.public(), b"pong")
            assert await wait_for(lambda: len(inbox_b.packets) == 20 and len(inbox_a.packets) == 20, 5)
            assert all(p == big for _, p in inbox_b.packets)
            # A client that does not trust the certificate never logs in.
            cx = client_for(server, relay_mesh, relay_mesh.devices["charlie"], transports=("tcp",),
                            tls=ssl.create_default_context())
            await cx.start()
            assert await wait_for(lambda: "SSL" in (cx.last_error or ""), 5)
            assert not cx.connected
            for c in (ca, cb, cx):
                await c.stop()

    asyncio.run(scenario())


def test_udp_blocked_falls_back_to_tcp(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            # Block UDP: the relay stops reading its UDP socket (datagrams vanish, like a firewall).
            assert server._udp is not None
            asyncio.get_running_loop().remove_reader(server._udp.fileno())
            alpha = relay_mesh.devices["alpha"]
            ca = client_for(server, relay_mesh, alpha)
            await ca.start()
            assert await ca.wait_connected(15)
            assert ca.transport == "tcp"
            await ca.stop()

    asyncio.run(scenario())


def test_relay_restart_traffic_resumes(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = relay_config(relay_mesh, tmp_path)
        alpha, bravo = relay_mesh.devices["alpha"], relay_mesh.devices["bravo"]
        inbox_b = Inbox()
        server = RelayServer(config, load_or_create_identity(config.state_dir))
        await server.start()
        assert server.udp_addr is not None
        port = server.udp_addr[1]
        ca = client_for(server, relay_mesh, alpha)
        cb = client_for(server, relay_mesh, bravo, inbox_b)
        await ca.start()
        await cb.start()
        assert await ca.wait_connected(5) and await cb.wait_connected(5)
        await server.stop()
        await asyncio.sleep(1.0)  # down for a second; packets sent meanwhile are lost
        server = RelayServer(replace(config, listen=f"127.0.0.1:{port}"), load_or_create_identity(config.state_dir))
        await server.start()
        restarted = time.monotonic()
        try:
            async def traffic() -> None:
                while True:
                    ca.send(bravo.wireguard.public(), b"tick")
                    await asyncio.sleep(0.1)

            before = len(inbox_b.packets)
            task = asyncio.create_task(traffic())
            assert await wait_for(lambda: len(inbox_b.packets) > before, 5)
            resumed = time.monotonic() - restarted
            task.cancel()
            assert resumed < 5.0, f"traffic resumed only after {resumed:.1f} s"
            assert ca.connects == 2 and cb.connects == 2
        finally:
            await ca.stop()
            await cb.stop()
            await server.stop()

    asyncio.run(scenario())


def test_flood_from_one_client_does_not_starve_another(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    limits = Limits(rate_bytes_per_s=2_000_000, burst_bytes=200_000)

    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path, limits=limits)) as server:
            alpha, bravo, charlie = (relay_mesh.devices[n] for n in ("alpha", "bravo", "charlie"))
            inbox_b = Inbox()
            cb = client_for(server, relay_mesh, bravo, inbox_b)
            cc = client_for(server, relay_mesh, charlie)
            await cb.start()
            await cc.start()
            assert await cb.wait_connected(5) and await cc.wait_connected(5)
            assert server.udp_addr is not None
            ctx = multiprocessing.get_context("spawn")
            result = ctx.Queue()
            proc = ctx.Process(target=flood, args=(
                ("127.0.0.1", server.udp_addr[1]), alpha.identity.private_bytes_for_device(),
                alpha.wireguard.public().raw, relay_mesh.network_id, bravo.wireguard.public().raw, 4.0, 1200,
                result))
            proc.start()
            try:
                assert await wait_for(lambda: inbox_b.count_from(alpha.wireguard.public()) > 100, 10)
                sent = 0
                for _ in range(200):  # 200 packets over ~2 s while the flood runs
                    sent += cc.send(bravo.wireguard.public(), b"\x04important")
                    await asyncio.sleep(0.01)
                await wait_for(lambda: inbox_b.count_from(charlie.wireguard.public()) >= sent, 2)
                flooded = await asyncio.to_thread(result.get, True, 15)
            finally:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            got_c = inbox_b.count_from(charlie.wireguard.public())
            got_a = inbox_b.count_from(alpha.wireguard.public())
            assert flooded > 10 * got_a, (flooded, got_a)  # the flood really was cut down
            assert server.core.stats.drops.get("rate_limited", 0) > 0
            print(f"flood: alpha sent {flooded}, {got_a} got through; charlie {got_c}/200")
            assert got_c >= 0.95 * 200, f"charlie got {got_c}/200 through while alpha flooded {flooded}"
            await cb.stop()
            await cc.stop()

    asyncio.run(scenario())


def test_relay_keeps_its_identity_key(tmp_path: Path) -> None:
    k1 = load_or_create_identity(tmp_path / "s")
    k2 = load_or_create_identity(tmp_path / "s")
    assert isinstance(k1, SigningKey) and k1.public() == k2.public()
    assert (tmp_path / "s" / "relay.key").stat().st_mode & 0o777 == 0o600
