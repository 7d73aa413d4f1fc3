"""Attacks at the relay (issue 23, "What was found" 5): a member asking for a channel in another
member's name, a non-member binding a channel port, guessing tokens, frame floods.

The core's rules first (pure, injected time), then the real server on loopback with real
sockets, an attacker process flooding it while members' packets cross it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest
from relay_support import (
    NETWORK_ID,
    Inbox,
    Member,
    RelayMesh,
    client_for,
    counter_rand,
    feed,
    login,
    make_core,
    pump,
    relay_config,
    running,
    wait_for,
)
from test_relay_channels import FakePorts
from test_relay_channels_loopback import _close, _ready_pair, _recv, _wireguard_socket

from meshctl.relay import channels as ch
from meshctl.relay import server_core
from meshctl.relay import wire as p
from meshctl.relay.server_core import RelayCore
from meshctl.relay.wire import ChannelRequest, marshal_frame


def test_a_member_cannot_ask_for_a_channel_in_another_members_name() -> None:
    """A request is always in the name of the session it comes from (its address and token):
    carol's own valid token sent from alice's address is refused, and carol's own requests
    only ever open channels with carol on one side."""
    alice, bob, carol = Member.new(), Member.new(), Member.new()
    ports = FakePorts()
    core = RelayCore("home", bytes(32), counter_rand(), ports=ports)
    core.set_members(NETWORK_ID, {m.verify_key: m.wg for m in (alice, bob, carol)}, 0.0)
    login(core, alice, "a")
    login(core, bob, "b")
    sc = login(core, carol, "c")
    carols = sc._token  # carol's own session token, which she knows
    assert feed(core, "a", marshal_frame(ChannelRequest(carols, bob.wg)), 2.0) == []  # spoofed source
    assert core.stats.drops.get("bad_token") == 1 and len(core.channels) == 0
    assert sc.request_channel(bob.wg)
    elsewhere = pump(core, sc, "c", 3.0)
    assert {item[0] for item in elsewhere if isinstance(item, tuple)} == {"b"}, \
        "alice heard of a channel she never asked for"
    assert core.channels.channels_of(alice.wg.raw) == 0 and core.channels.channels_of(carol.wg.raw) == 1


def test_guessed_bind_tokens_never_take_a_channel_port() -> None:
    """128 random bits per side: 100,000 guesses bind nothing (at a million guesses a second the
    expected time to a hit is about 5 * 10^24 years), and each is one comparison."""
    ports = FakePorts()
    table = ch.ChannelTable(ports, os.urandom)
    a, b = ch.Member(b"A" * 32, "a"), ch.Member(b"B" * 32, "b")
    offers = table.request(a, b.wg_key, b, 0.0)
    stranger = ("192.0.2.66", 4444)
    for _ in range(100_000):
        assert table.receive_bind(offers[0].port, stranger, ch.marshal_bind(os.urandom(16)), 1.0) == []
    assert table.stats.refused["bad_token"] == 100_000 and table.stats.binds == 0 and ports.bound == {}


def test_forged_logins_cost_a_bounded_number_of_signature_checks() -> None:
    """A forged ChallengeResponse (a member's public keys, a nonce the sender got for its own
    address, any signature) cost the relay a signature check each, ~0.3 ms: 3,000 a second took
    a core. Now each address gets a check or so a second, all together AUTH_CHECKS_PER_S, and the
    rest is dropped before any cryptography; a real member still logs in meanwhile."""
    alice, bob = Member.new(), Member.new()
    core = make_core([alice, bob])
    nonces = {}
    for i in range(50):
        conn = (f"198.51.100.{i + 1}", 4000)  # addresses apart: challenges are rate-limited per address
        (_, challenge), = feed(core, conn, marshal_frame(p.ClientHello(alice.verify_key, alice.wg)), 1.0)
        frame = p.parse_frame(challenge)
        assert isinstance(frame, p.Challenge)
        nonces[conn] = frame.nonce
    checked_before = core.stats.auth_failed
    for i in range(20_000):  # two seconds of forged responses from 50 addresses
        conn = (f"198.51.100.{i % 50 + 1}", 4000)
        forged = marshal_frame(p.ChallengeResponse(alice.verify_key, alice.wg, nonces[conn], os.urandom(64)))
        feed(core, conn, forged, 1.0 + i / 10_000)
    checked = core.stats.auth_failed - checked_before
    assert checked <= 50 * (server_core.AUTH_CHECKS_PER_SOURCE_BURST + 2 * server_core.AUTH_CHECKS_PER_SOURCE_PER_S)
    assert core.stats.drops["auth_rate_limited"] == 20_000 - checked
    login(core, bob, "bob", now=3.0)
    assert core.session_of("bob") is not None, "a member could not log in during the flood"
    # From ever more addresses, each with its own nonce: the relay-wide budget holds.
    many = make_core([alice])
    challenged = 0
    for i in range(2_000):
        conn = (f"10.{i // 250}.{i % 250}.1", 10_000)
        replies = feed(many, conn, marshal_frame(p.ClientHello(alice.verify_key, alice.wg)), 1.0)
        if not replies:
            continue  # past the relay's budget for challenges
        frame = p.parse_frame(replies[0][1])
        assert isinstance(frame, p.Challenge)
        challenged += 1
        feed(many, conn, marshal_frame(p.ChallengeResponse(alice.verify_key, alice.wg, frame.nonce, bytes(64))), 1.0)
    assert challenged > server_core.AUTH_CHECKS_PER_S and many.stats.auth_failed <= server_core.AUTH_CHECKS_PER_S


# --- the real server on loopback ------------------------------------------------------------------


def _frame_flood(relay: tuple[str, int], identity_raw: bytes, wg_raw: bytes, seconds: float, result: object) -> None:
    """A stranger's flood on the relay's port: garbage, frames with made-up tokens, hellos and
    forged login responses (a member's public keys, a nonce for its own address)."""
    from meshctl.keys import NodePublic, SigningKey

    identity, wg = SigningKey(identity_raw).public(), NodePublic(wg_raw)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(relay)
    sock.settimeout(1.0)
    sock.send(marshal_frame(p.ClientHello(identity, wg)))
    challenge = p.parse_frame(sock.recv(2048))
    assert isinstance(challenge, p.Challenge)
    sock.setblocking(False)
    kinds = [os.urandom(60),
             marshal_frame(p.SendPacket(os.urandom(8), wg, b"\x04" + bytes(100))),
             marshal_frame(ChannelRequest(os.urandom(8), wg)),
             marshal_frame(p.ClientHello(identity, wg)),
             marshal_frame(p.ChallengeResponse(identity, wg, challenge.nonce, os.urandom(64)))]
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(50):
            try:
                sock.send(kinds[sent % len(kinds)])
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
            try:
                while sock.recv(2048):
                    pass
            except (BlockingIOError, ConnectionRefusedError):
                pass
    result.put(sent)  # type: ignore[attr-defined]


def test_a_frame_flood_from_a_stranger_leaves_members_traffic_alone(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            alpha, bravo, charlie = (relay_mesh.devices[n] for n in ("alpha", "bravo", "charlie"))
            inbox_b = Inbox()
            cb, cc = client_for(server, relay_mesh, bravo, inbox_b), client_for(server, relay_mesh, charlie)
            for c in (cb, cc):
                await c.start()
                assert await c.wait_connected(5)
            assert server.udp_addr is not None
            ctx = multiprocessing.get_context("spawn")
            result = ctx.Queue()
            proc = ctx.Process(target=_frame_flood, args=(("127.0.0.1", server.udp_addr[1]),
                                                          alpha.identity.private_bytes_for_device(),
                                                          alpha.wireguard.public().raw, 4.0, result))
            proc.start()
            try:
                await asyncio.sleep(1.0)  # the flood is on
                sent = 0
                for _ in range(200):
                    sent += cc.send(bravo.wireguard.public(), b"\x04important")
                    await asyncio.sleep(0.01)
                await wait_for(lambda: inbox_b.count_from(charlie.wireguard.public()) >= sent, 3)
                flooded = await asyncio.to_thread(result.get, True, 15)
            finally:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            got = inbox_b.count_from(charlie.wireguard.public())
            drops = server.core.stats.drops
            print(f"frame flood: {flooded} sent; charlie {got}/{sent}; drops {drops}; "
                  f"signature checks {server.core.stats.auth_failed}")
            assert flooded > 5_000, "the flood did not happen"
            assert sent == 200 and got >= 0.98 * sent, f"{got}/{sent} of charlie's packets crossed during the flood"
            most = server_core.AUTH_CHECKS_PER_SOURCE_BURST + 6 * server_core.AUTH_CHECKS_PER_SOURCE_PER_S
            assert server.core.stats.auth_failed <= most
            assert drops.get("auth_rate_limited", 0) > 100 and server.core.sessions == 2
            await cb.stop()
            await cc.stop()

    asyncio.run(scenario())


def test_a_members_token_from_another_members_address_opens_nothing(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    """On the real server: charlie sends a channel request to bravo carrying charlie's own valid
    token from alice's address (a raw socket forges the source): dropped, no channel for anyone,
    alice hears of nothing."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a raw socket forges the source address)")
    from meshctl.nat.addr import parse_addr_port
    from meshctl.nat.packet import UdpPacket, build_ipv4_udp

    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            alpha, bravo, charlie = (relay_mesh.devices[n] for n in ("alpha", "bravo", "charlie"))
            clients = [client_for(server, relay_mesh, keys) for keys in (alpha, bravo, charlie)]
            for c in clients:
                await c.start()
                assert await c.wait_connected(5)
            ca, _, cc = clients
            assert ca._link is not None and cc._link is not None and server.udp_addr is not None
            alice_addr = ca._link.sock.getsockname()  # type: ignore[attr-defined]
            request = marshal_frame(ChannelRequest(cc._link.session._token, bravo.wireguard.public()))
            forged = build_ipv4_udp(UdpPacket(parse_addr_port(f"127.0.0.1:{alice_addr[1]}"),
                                              parse_addr_port(f"127.0.0.1:{server.udp_addr[1]}"), request))
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
                for _ in range(5):
                    raw.sendto(forged, ("127.0.0.1", 0))
            assert await wait_for(lambda: server.core.stats.drops.get("bad_token", 0) >= 5, 5)
            assert len(server.core.channels) == 0 and ca.channels == {} and cc.channels == {}
            for c in clients:
                await c.stop()

    asyncio.run(scenario())


def test_a_stranger_guessing_bind_tokens_never_takes_the_port(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    """20,000 binds with made-up tokens on both ports of a working channel: none moves a port,
    and the members' packets keep crossing it both ways meanwhile."""
    async def scenario() -> None:
        async with running(relay_config(relay_mesh, tmp_path)) as server:
            ca, cb, wg_a, wg_b, port_a, port_b = await _ready_pair(server, relay_mesh)
            stranger = _wireguard_socket()
            delivered = 0
            for i in range(100):
                for _ in range(100):
                    for port in (port_a, port_b):
                        try:
                            stranger.sendto(ch.marshal_bind(os.urandom(16)), ("127.0.0.1", port))
                        except BlockingIOError:
                            pass
                wg_a.sendto(b"\x04member" + bytes([i]), ("127.0.0.1", port_a))
                item = await _recv(wg_b, 1.0)
                delivered += item is not None and item[0].startswith(b"\x04member")
            wg_b.sendto(b"\x04back", ("127.0.0.1", port_b))
            assert await _recv(wg_a) == (b"\x04back", ("127.0.0.1", port_a))
            assert await _recv(stranger, 0.3) is None, "the stranger got a packet of the channel"
            refused = server.core.channels.stats.refused.get("bad_token", 0)
            assert delivered == 100 and refused > 10_000 and server.core.channels.stats.binds == 2, (delivered, refused)
            await _close((wg_a, wg_b, stranger), (ca, cb))

    asyncio.run(scenario())
