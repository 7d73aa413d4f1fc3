"""A relay run under a name other than the one the state lists: both sides say so (issue 18).

Members refuse such a relay (signing its challenge would let it log in as them elsewhere);
before, they did so without a word, and so did the relay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from relay_support import (
    NETWORK_ID,
    Member,
    RelayMesh,
    client_for,
    counter_rand,
    load_or_create_identity,
    make_core,
    relay_config,
    running,
    wait_for,
)

from meshctl.coord import relays_admin
from meshctl.coord.netmap import Relay
from meshctl.keys import SigningKey, VerifyKey
from meshctl.relay.client_core import (
    HANDSHAKE_TIMEOUT_S,
    ClientSession,
    ClientState,
    ConnectionLost,
    NotTheListedRelay,
)
from meshctl.relay.sync import listing_problem
from meshctl.relay.wire import ChallengeResponse, parse_frame


def run_login(core_name: str, expected: str, relay_key: object = None) -> tuple[ClientSession, list[object]]:
    member = Member.new()
    core = make_core([member], name=core_name, signing_key=SigningKey.generate())
    sess = ClientSession(member.identity, member.wg, NETWORK_ID, counter_rand(), expected,
                         relay_key)  # type: ignore[arg-type]
    sess.connect(1.0)
    sent: list[object] = []
    for now in (1.0, 2.0, 3.0):  # the hello is resent; the relay answers each
        for frame in sess.data_to_send():
            sent.append(parse_frame(frame))
            core.receive("conn", frame, now)
        for item in core.take_output():
            if isinstance(item, tuple):
                sess.receive_frame(item[1], now)
        sess.handle_timer(now)
    sess.handle_timer(1.0 + HANDSHAKE_TIMEOUT_S)
    return sess, sent


def test_a_misnamed_relay_is_told_once_and_nothing_is_signed_for_it() -> None:
    sess, sent = run_login("relay", "lab")
    events = list(sess.events())
    told = [e for e in events if isinstance(e, NotTheListedRelay)]
    assert told == [NotTheListedRelay("it introduces itself as 'relay'")]
    assert not any(isinstance(f, ChallengeResponse) for f in sent)
    assert sess.state is ClientState.CLOSED and isinstance(events[-1], ConnectionLost)


def test_a_relay_without_the_listed_key_is_told() -> None:
    listed = SigningKey.generate().public()
    sess, _ = run_login("lab", "lab", relay_key=listed)
    told = [e for e in sess.events() if isinstance(e, NotTheListedRelay)]
    assert len(told) == 1 and f"not signed by the listed identity key {listed.short()}" in told[0].reason


def test_the_right_relay_is_not_told_about() -> None:
    sess, _ = run_login("lab", "lab")
    assert sess.state is ClientState.CONNECTED
    assert not [e for e in sess.events() if isinstance(e, NotTheListedRelay)]


KEY = SigningKey.generate().public()
OTHER = SigningKey.generate().public()


@pytest.mark.parametrize(("listed", "problem"), [
    ((Relay("lab", "203.0.113.5:3340", KEY),), "lists this relay (identity " + KEY.short() + ") as 'lab'; "
     "members refuse it, since it introduces itself as 'relay': restart it with --name lab"),
    ((Relay("relay", "203.0.113.5:3340", KEY),), None),
    ((Relay("relay", "203.0.113.5:3340", None),), "without its identity key; members never use such a relay"),
    ((Relay("relay", "203.0.113.5:3340", OTHER),), "with identity key " + OTHER.short()),
    ((Relay("lab", "203.0.113.5:3340", None),), "lists no relay named 'relay' (it lists 'lab')"),
    ((), "lists no relay named 'relay' (it lists none)"),
])
def test_the_relay_checks_how_the_state_lists_it(listed: tuple[Relay, ...], problem: str | None) -> None:
    got = listing_problem(listed, "relay", KEY)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got.startswith("relay relay: ") and problem in got


def test_both_sides_say_what_is_wrong_over_loopback(relay_mesh: RelayMesh, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The relay runs as 'relay' (the default --name); the state lists it as 'lab'."""
    async def scenario() -> None:
        config = relay_config(relay_mesh, tmp_path, name="relay")
        key = load_or_create_identity(config.state_dir).public()
        relay_mesh_relays(relay_mesh, "lab", key)
        async with running(config) as server:
            assert server.listing_problem is not None and "restart it with --name lab" in server.listing_problem
            client = client_for(server, relay_mesh, relay_mesh.devices["alpha"], relay_name="lab")
            await client.start()
            assert await wait_for(lambda: client.last_error == "it introduces itself as 'relay'", 10)
            assert not client.connected
            await asyncio.sleep(HANDSHAKE_TIMEOUT_S + 0.5)  # the attempt times out: the reason stays
            assert client.last_error == "it introduces itself as 'relay'"
            assert client.status()["last_error"] == "it introduces itself as 'relay'"
            await client.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line == "relay lab: it introduces itself as 'relay'" for line in lines) == 1, lines
    assert any(line.startswith("relay relay: the coordination state lists this relay") for line in lines), lines


def relay_mesh_relays(mesh: RelayMesh, name: str, key: VerifyKey) -> None:
    relays_admin.add_relay(mesh.checkout, name, "127.0.0.1:3340", key.text(), mesh.admin_keys, int(time.time()))
    mesh.commit("relay")
