"""Pure tests of relay channels: the table, the bind codec, and the frames through core and client."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from relay_support import Member, counter_rand, login, make_core, pump

from meshctl.relay import channels as ch
from meshctl.relay.channels import ChannelState, ChannelTable, Notice
from meshctl.relay.client_core import ChannelChanged
from meshctl.relay.server_core import ClientDropped, RelayCore
from meshctl.relay.wire import ChannelInfo, Denied, DenyReason, marshal_frame, parse_frame

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32
ADDR_A, ADDR_B = ("198.51.100.1", 40000), ("203.0.113.2", 51820)


class FakePorts:
    """A PortAllocator that hands out ports in order and records what the table asked."""

    def __init__(self, limit: int = 1000) -> None:
        self.next = 40000
        self.limit = limit
        self.open: set[int] = set()
        self.bound: dict[int, tuple[str, int]] = {}
        self.log: list[str] = []

    def open_pair(self) -> tuple[int, int] | None:
        if len(self.open) + 2 > self.limit:
            return None
        pair = (self.next, self.next + 1)
        self.next += 2
        self.open.update(pair)
        self.log.append(f"open {pair[0]} {pair[1]}")
        return pair

    def bind(self, port: int, addr: tuple[str, int]) -> None:
        self.bound[port] = addr
        self.log.append(f"bind {port} {addr[0]}:{addr[1]}")

    def close_pair(self, ports: tuple[int, int]) -> None:
        for port in ports:
            self.open.discard(port)
            self.bound.pop(port, None)
        self.log.append(f"close {ports[0]} {ports[1]}")


def member(key: bytes) -> ch.Member:
    return ch.Member(key, ("conn", key[:1]))


def table(**kw: float) -> tuple[ChannelTable, FakePorts]:
    ports = FakePorts()
    return ChannelTable(ports, counter_rand(), **kw), ports  # type: ignore[arg-type]


def offered(t: ChannelTable) -> tuple[Notice, Notice]:
    notices = t.request(member(A), B, member(B), now=0.0)
    assert [n.state for n in notices] == [ChannelState.OFFERED] * 2
    return notices[0], notices[1]


def test_bind_codec_round_trip_and_errors() -> None:
    token = bytes(range(16))
    data = ch.marshal_bind(token)
    assert data.hex() == "6d635242" + "01" + token.hex()
    assert ch.parse_bind(data) == token
    for bad in (b"", data[:-1], data + b"x", b"mcRX" + data[4:], b"mcRB\x02" + token):
        with pytest.raises(ch.BindParseError):
            ch.parse_bind(bad)
    with pytest.raises(ValueError):
        ch.marshal_bind(b"short")


@given(st.binary(max_size=64))
def test_bind_parser_gives_a_token_or_its_error(data: bytes) -> None:
    try:
        assert len(ch.parse_bind(data)) == ch.BIND_TOKEN_LEN
    except ch.BindParseError:
        pass


def test_request_offers_a_port_and_token_to_each_side() -> None:
    t, ports = table()
    to_a, to_b = offered(t)
    assert (to_a.conn, to_a.peer, to_a.port) == (("conn", b"A"), B, 40000)
    assert (to_b.conn, to_b.peer, to_b.port) == (("conn", b"B"), A, 40001)
    assert to_a.token != to_b.token and len(to_a.token) == ch.BIND_TOKEN_LEN
    assert ports.log == ["open 40000 40001"]
    assert t.partner(40000) == (40001, A) and t.partner(40001) == (40000, B)
    # Asking again (either side) re-sends that side's offer; nothing new is opened.
    assert t.request(member(B), A, member(A), now=1.0) == [to_b]
    assert ports.log == ["open 40000 40001"] and len(t) == 1


def test_both_binds_make_the_channel_ready_for_both() -> None:
    t, ports = table()
    to_a, to_b = offered(t)
    assert t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_b.token), 1.0) == []  # B's token on A's port
    assert t.stats.refused == {"bad_token": 1} and ports.bound == {}
    assert t.receive_bind(40000, ADDR_A, b"\x01\x00\x00\x00handshake", 1.0) == []  # WireGuard before the bind
    assert t.stats.refused["stray"] == 1
    assert t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_a.token), 1.0) == []  # half bound: not ready
    assert ports.bound == {40000: ADDR_A}
    ready = t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 1.5)
    assert [(n.conn, n.port, n.state) for n in ready] == [(("conn", b"A"), 40000, ChannelState.READY),
                                                         (("conn", b"B"), 40001, ChannelState.READY)]
    # The same bind again (every BIND_INTERVAL_S) changes nothing.
    assert t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 11.5) == []
    assert ports.log == ["open 40000 40001", "bind 40000 198.51.100.1:40000", "bind 40001 203.0.113.2:51820"]


def test_asking_again_says_ready_only_after_recent_binds_from_both_sides() -> None:
    """How a member that fell back to the relay checks that its WireGuard port, and its peer's,
    still reach the channel: a bind (or data, which is how a bind from the bound address
    arrives) from each in the last CONFIRM_FRESH_S; a channel bound long ago proves nothing."""
    t, _ = table()
    to_a, to_b = offered(t)
    t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_a.token), 1.0)
    t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 1.0)
    [fresh] = t.request(member(A), B, member(B), now=1.0 + ch.CONFIRM_FRESH_S)
    assert (fresh.port, fresh.token, fresh.state) == (40000, to_a.token, ChannelState.READY)
    [stale] = t.request(member(A), B, member(B), now=30.0)
    assert stale.state is ChannelState.OFFERED  # nothing from A for 29 s
    t.heard(40000, 33.0)
    [half] = t.request(member(A), B, member(B), now=34.0)
    assert half.state is ChannelState.OFFERED  # A is back, but B's side may be cut off: nothing since 1.0
    assert t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 35.0) == []  # same address: no news pushed
    [again] = t.request(member(A), B, member(B), now=36.0)
    assert again.state is ChannelState.READY
    [b_view] = t.request(member(B), A, member(A), now=36.0)
    assert (b_view.port, b_view.state) == (40001, ChannelState.READY)
    [b_later] = t.request(member(B), A, member(A), now=36.5 + ch.CONFIRM_FRESH_S)
    assert b_later.state is ChannelState.OFFERED  # A silent since 33.0


def test_a_bind_completes_a_channel_only_while_the_side_bound_before_is_heard() -> None:
    """A side bound during a brief relayed spell, then left for a direct path, stops binding;
    the other side's bind much later must not make the channel READY on its old binding (the
    e2e 'direct flow moves to the relay' found it: a's port was blocked meanwhile)."""
    t, ports = table()
    to_a, to_b = offered(t)
    assert t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_a.token), 1.0) == []
    assert t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 20.0) == []  # A silent since 1.0
    assert 40001 in ports.bound
    again = t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_a.token), 21.0)  # A binds again: both fresh
    assert [(n.conn, n.state) for n in again] == [(("conn", b"A"), ChannelState.READY),
                                                 (("conn", b"B"), ChannelState.READY)]
    [b_view] = t.request(member(B), A, member(A), now=21.5)
    assert b_view.state is ChannelState.READY


def test_a_rebound_nat_moves_the_port_with_the_token() -> None:
    t, ports = table()
    to_a, to_b = offered(t)
    t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_a.token), 1.0)
    t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 1.0)
    moved = ("198.51.100.1", 40999)
    again = t.receive_bind(40000, moved, ch.marshal_bind(to_a.token), 20.0)
    assert [(n.conn, n.state) for n in again] == [(("conn", b"A"), ChannelState.READY)]
    assert ports.bound[40000] == moved
    # Someone else cannot move it: the token is per side and secret.
    assert t.receive_bind(40000, ("192.0.2.66", 1), ch.marshal_bind(bytes(16)), 21.0) == []
    assert ports.bound[40000] == moved


def test_a_member_leaving_closes_its_channels_and_tells_the_others() -> None:
    t, ports = table()
    offered(t)
    t.request(member(C), A, member(A), now=0.0)
    t.request(member(B), C, member(C), now=0.0)
    assert len(t) == 3 and t.channels_of(A) == 2
    notices = t.member_gone(A)
    assert sorted((n.conn, n.peer, n.state) for n in notices) == [(("conn", b"B"), A, ChannelState.CLOSED),
                                                                  (("conn", b"C"), A, ChannelState.CLOSED)]
    assert len(t) == 1 and t.channels_of(A) == 0 and ports.open == {40004, 40005}
    assert t.partner(40000) is None


def test_a_silent_side_closes_the_channel_after_the_idle_time() -> None:
    t, ports = table(idle_s=60.0)
    to_a, to_b = offered(t)
    t.receive_bind(40000, ADDR_A, ch.marshal_bind(to_a.token), 1.0)
    t.receive_bind(40001, ADDR_B, ch.marshal_bind(to_b.token), 1.0)
    t.heard(40000, 50.0)  # A's data; B went quiet at 1.0
    assert t.expire(60.0) == []
    closed = t.expire(61.5)
    assert sorted((n.conn, n.state) for n in closed) == [(("conn", b"A"), ChannelState.CLOSED),
                                                        (("conn", b"B"), ChannelState.CLOSED)]
    assert len(t) == 0 and ports.open == set()


def test_requests_that_cannot_be_served_are_answered_closed() -> None:
    t, ports = table(max_per_member=1)
    assert [(n.peer, n.state) for n in t.request(member(A), B, None, 0.0)] == [(B, ChannelState.CLOSED)]
    assert t.request(member(A), A, member(A), 0.0)[0].state is ChannelState.CLOSED  # to itself
    assert t.request(member(A), B, member(C), 0.0)[0].state is ChannelState.CLOSED  # key and session differ
    offered(t)
    assert t.request(member(A), C, member(C), 0.0)[0].state is ChannelState.CLOSED  # A's one channel is used
    assert t.stats.refused == {"no_peer": 3, "limit": 1}
    t2 = ChannelTable(FakePorts(limit=0), counter_rand())
    assert t2.request(member(A), B, member(B), 0.0)[0].state is ChannelState.CLOSED
    assert t2.stats.refused == {"no_ports": 1}


# --- through the relay core and the client session -----------------------------------------------


def _channel_frames(outputs: list[object]) -> dict[object, ChannelInfo]:
    got = {}
    for item in outputs:
        if not isinstance(item, tuple):
            continue  # a session event
        conn, data = item
        frame = parse_frame(data)
        assert isinstance(frame, ChannelInfo)
        got[conn] = frame
    return got


def test_core_offers_channels_between_logged_in_members_and_closes_them_on_revocation() -> None:
    alice, bob = Member.new(), Member.new()
    ports = FakePorts()
    core = RelayCore("home", bytes(32), counter_rand(), ports=ports)  # type: ignore[arg-type]
    from relay_support import NETWORK_ID
    core.set_members(NETWORK_ID, {alice.verify_key: alice.wg, bob.verify_key: bob.wg}, 0.0)
    sa = login(core, alice, "a")
    login(core, bob, "b")
    assert sa.request_channel(bob.wg)
    elsewhere = pump(core, sa, "a", 2.0)
    events = list(sa.events())
    assert [type(e) for e in events][-1] is ChannelChanged
    mine = events[-1].info  # type: ignore[union-attr]
    assert (mine.peer, mine.port, mine.state) == (bob.wg, 40000, ChannelState.OFFERED)
    theirs = _channel_frames(elsewhere)["b"]
    assert (theirs.peer, theirs.port, theirs.state) == (alice.wg, 40001, ChannelState.OFFERED)

    # Binds through the core: the second makes both READY.
    core.receive_bind(40000, ADDR_A, ch.marshal_bind(mine.bind_token), 3.0)
    assert core.take_output() == []
    core.receive_bind(40001, ADDR_B, ch.marshal_bind(theirs.bind_token), 3.0)
    ready = _channel_frames(core.take_output())
    assert {c: f.state for c, f in ready.items()} == {"a": ChannelState.READY, "b": ChannelState.READY}

    # Bob is revoked: he is told, his session goes (hung up), then Alice hears the channel CLOSED.
    core.set_members(NETWORK_ID, {alice.verify_key: alice.wg}, 4.0)
    denied, dropped, closing = core.take_output()
    assert denied == ("b", marshal_frame(Denied(DenyReason.REVOKED)))
    assert isinstance(dropped, ClientDropped) and (dropped.conn, dropped.hang_up) == ("b", True)
    closed = _channel_frames([closing])
    assert list(closed) == ["a"] and closed["a"].state is ChannelState.CLOSED and closed["a"].peer == bob.wg
    assert ports.open == set() and len(core.channels) == 0


def test_core_without_ports_answers_every_request_closed() -> None:
    alice, bob = Member.new(), Member.new()
    core = make_core([alice, bob])
    sa = login(core, alice, "a")
    login(core, bob, "b")
    sa.request_channel(bob.wg)
    pump(core, sa, "a", 2.0)
    events = [e for e in sa.events() if isinstance(e, ChannelChanged)]
    assert [e.info.state for e in events] == [ChannelState.CLOSED]


def test_a_channel_request_needs_the_session_token() -> None:
    alice, bob = Member.new(), Member.new()
    core = RelayCore("home", bytes(32), counter_rand(), ports=FakePorts())  # type: ignore[arg-type]
    from relay_support import NETWORK_ID
    core.set_members(NETWORK_ID, {alice.verify_key: alice.wg, bob.verify_key: bob.wg}, 0.0)
    login(core, alice, "a")
    login(core, bob, "b")
    from meshctl.relay.wire import ChannelRequest

    forged = marshal_frame(ChannelRequest(bytes(8), bob.wg))
    core.receive("a", forged, 2.0)
    assert core.take_output() == []
    assert core.stats.drops.get("bad_token") == 1 and len(core.channels) == 0
