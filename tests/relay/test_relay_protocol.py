"""Pure tests of the relay frame codec and the two session state machines."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from relay_support import NETWORK_ID, Member, counter_rand, drain, feed, login, make_core, pump

from meshctl.keys import NodePublic, SigningKey, VerifyKey
from meshctl.nat import stun
from meshctl.nat.addr import addr_port
from meshctl.relay import client_core, server_core, wire
from meshctl.relay.channels import ChannelState
from meshctl.relay.client_core import (
    ClientSession,
    ClientState,
    Connected,
    ConnectionLost,
    PacketReceived,
    PongReceived,
    Refused,
)
from meshctl.relay.server_core import ClientDropped
from meshctl.relay.wire import (
    Challenge,
    ChallengeResponse,
    ClientHello,
    Denied,
    DenyReason,
    FrameDecoder,
    KeepAlive,
    Ping,
    Pong,
    RecvPacket,
    SendPacket,
    Welcome,
    marshal_frame,
    parse_frame,
)

K1 = VerifyKey(bytes(range(32)))
N1 = NodePublic(bytes([7]) * 32)
TOKEN = bytes(range(8))

ALL_FRAMES: list[wire.Frame] = [
    ClientHello(K1, N1),
    Challenge(bytes(32), "home"),
    Challenge(bytes([1]) * 32, ""),
    ChallengeResponse(K1, N1, bytes([2]) * 32, bytes([3]) * 64),
    Welcome(TOKEN, 5000),
    Welcome(TOKEN, 5000, bytes([9]) * 64),
    Denied(DenyReason.AUTH_FAILED),
    SendPacket(TOKEN, N1, b"\x04\x00\x00\x00ciphertext"),
    SendPacket(TOKEN, N1, b""),
    RecvPacket(N1, b"payload"),
    KeepAlive(TOKEN),
    Ping(TOKEN, b"12345678"),
    Pong(b"12345678"),
    wire.Close(TOKEN),
    wire.ChannelRequest(TOKEN, N1),
    wire.ChannelInfo(N1, 40001, bytes(range(16)), ChannelState.OFFERED),
    wire.ChannelInfo(N1, 65535, bytes([5]) * 16, ChannelState.READY),
    wire.ChannelInfo(N1, 0, bytes(16), ChannelState.CLOSED),
]


# --- codec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: wire.Frame) -> None:
    data = marshal_frame(frame)
    assert data[:4] == b"mcRL" and data[4] == 1
    assert struct.unpack("!H", data[6:8])[0] == len(data) - wire.HEADER_LEN
    assert parse_frame(data) == frame


def test_channel_frames_golden_bytes() -> None:
    request = marshal_frame(wire.ChannelRequest(TOKEN, N1))
    assert request.hex() == "6d63524c010c0028" + TOKEN.hex() + "07" * 32
    info = marshal_frame(wire.ChannelInfo(N1, 0x9C41, bytes(range(16)), ChannelState.READY))
    assert info.hex() == "6d63524c010d0033" + "07" * 32 + "9c41" + bytes(range(16)).hex() + "02"
    # a CLOSED channel carries neither port nor token, whatever the caller passed
    closed = marshal_frame(wire.ChannelInfo(N1, 0, b"", ChannelState.CLOSED))
    assert closed[-19:] == bytes(18) + b"\x00"


def test_golden_bytes() -> None:
    assert marshal_frame(Pong(b"ABCDEFGH")).hex() == "6d63524c010a0008" + b"ABCDEFGH".hex()
    assert marshal_frame(Denied(DenyReason.NO_SESSION)).hex() == "6d63524c0105000103"
    hello = marshal_frame(ClientHello(K1, N1))
    assert hello.hex() == "6d63524c01010040" + bytes(range(32)).hex() + "07" * 32


def test_magic_is_neither_stun_nor_wireguard() -> None:
    for frame in ALL_FRAMES:
        data = marshal_frame(frame)
        assert not stun.is_stun(data)
        assert data[0] >> 6 == 0b01  # STUN starts with 00
        assert data[0] not in (1, 2, 3, 4)  # WireGuard message types


@pytest.mark.parametrize(("data", "error"), [
    (b"", wire.TruncatedFrameError),
    (b"mcRL\x01", wire.TruncatedFrameError),
    (b"XXXX\x01\x0a\x00\x08ABCDEFGH", wire.BadMagicError),
    (b"mcRL\x02\x0a\x00\x08ABCDEFGH", wire.UnsupportedVersionError),
    (b"mcRL\x01\x7f\x00\x00", wire.UnknownFrameTypeError),
    (b"mcRL\x01\x0a\x00\x08ABCD", wire.TruncatedFrameError),
    (b"mcRL\x01\x0a\x00\x04ABCDEFGH", wire.FrameTooLargeError),  # trailing bytes
    (b"mcRL\x01\x0a\x00\x04ABCD", wire.MalformedFrameError),  # pong must carry 8 bytes
    (b"mcRL\x01\x05\x00\x01\x63", wire.MalformedFrameError),  # unknown deny reason
    (b"mcRL\x01\x04\x00\x0c" + bytes(8) + bytes(4), wire.MalformedFrameError),  # zero ping interval
    (b"mcRL\x01\x02\x00\x22" + bytes(32) + b"\x05a", wire.MalformedFrameError),  # name length lies
    (b"mcRL\x01\x02\x00\x22" + bytes(32) + b"\x01\xff", wire.MalformedFrameError),  # non-ASCII name
    (b"mcRL\x01\x06\x00\x10" + bytes(16), wire.MalformedFrameError),  # send without a full key
    (b"mcRL\x01\x06" + b"\xff\xff" + bytes(65535), wire.FrameTooLargeError),
    (b"mcRL\x01\x0d\x00\x33" + bytes(32) + b"\x9c\x41" + bytes(16) + b"\x07", wire.MalformedFrameError),  # state
    (b"mcRL\x01\x0d\x00\x33" + bytes(32) + b"\x00\x00" + bytes(16) + b"\x02", wire.MalformedFrameError),  # no port
    (b"mcRL\x01\x0d\x00\x33" + bytes(32) + b"\x9c\x41" + bytes(16) + b"\x00", wire.MalformedFrameError),  # closed
    (b"mcRL\x01\x0c\x00\x20" + bytes(32), wire.MalformedFrameError),  # channel request without a token
])
def test_parse_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_frame(data)


def test_parse_error_is_a_meshctl_parse_error() -> None:
    from meshctl.errors import ParseError

    assert issubclass(wire.RelayParseError, ParseError)


def test_marshal_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(wire.LocalProtocolError):
        marshal_frame(SendPacket(b"short", N1, b""))
    with pytest.raises(wire.LocalProtocolError):
        marshal_frame(Challenge(bytes(32), "x" * 64))
    with pytest.raises(wire.LocalProtocolError):
        marshal_frame(SendPacket(TOKEN, N1, bytes(wire.MAX_PAYLOAD_LEN + 1)))
    assert len(marshal_frame(SendPacket(TOKEN, N1, bytes(wire.MAX_PAYLOAD_LEN)))) == wire.MAX_FRAME_LEN


def test_stream_decoder_whole_bytewise_and_batched() -> None:
    stream = b"".join(marshal_frame(f) for f in ALL_FRAMES)
    whole = FrameDecoder().feed(stream)
    assert [parse_frame(f) for f in whole] == ALL_FRAMES
    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
    assert [parse_frame(f) for f in out] == ALL_FRAMES
    assert dec.pending == 0
    dec = FrameDecoder()
    assert dec.feed(stream[:5]) == []
    assert len(dec.feed(stream[5:])) == len(ALL_FRAMES)


def test_stream_decoder_rejects_garbage() -> None:
    with pytest.raises(wire.BadMagicError):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\n\r\n")


frames_st = st.sampled_from(ALL_FRAMES).map(marshal_frame)


@settings(max_examples=600, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda t, b: b"mcRL\x01" + bytes([t]) + struct.pack("!H", len(b)) + b,
              st.integers(0, 255), st.binary(max_size=200)),
    st.builds(lambda f, cut, junk: f[:cut] + junk, frames_st, st.integers(0, 200), st.binary(max_size=20)),
))
def test_fuzz_parse_frame(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except wire.RelayParseError:
        return
    assert marshal_frame(frame) == data  # anything accepted is canonical


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(frames_st, st.binary(max_size=40)), max_size=8), st.integers(1, 64))
def test_fuzz_stream_decoder(parts: list[bytes], chunk: int) -> None:
    stream = b"".join(parts)
    dec = FrameDecoder()
    try:
        for i in range(0, len(stream), chunk):
            for frame in dec.feed(stream[i : i + chunk]):
                try:
                    parse_frame(frame)
                except wire.RelayParseError:
                    pass
    except wire.RelayParseError:
        return
    assert dec.pending <= wire.MAX_STREAM_BUFFER


# --- server core + client session ------------------------------------------------------------


def test_member_logs_in_and_packets_flow() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    sa, sb = login(core, a, ("10.0.0.1", 1)), login(core, b, ("10.0.0.2", 2))
    assert sa.state is ClientState.CONNECTED and sb.state is ClientState.CONNECTED
    assert isinstance(sa.next_event(), Connected)
    assert core.sessions == 2
    frame = sa.send_packet(b.wg, b"\x04\x00\x00\x00secret")
    assert frame is not None
    out = feed(core, ("10.0.0.1", 1), frame, 2.0)
    assert len(out) == 1 and out[0][0] == ("10.0.0.2", 2)
    assert parse_frame(out[0][1]) == RecvPacket(a.wg, b"\x04\x00\x00\x00secret")
    sb.receive_frame(out[0][1], 2.0)
    events = list(sb.events())
    assert PacketReceived(a.wg, b"\x04\x00\x00\x00secret") in events
    assert core.stats.packets_in == 1 and core.stats.packets_out == 1


def test_non_member_gets_only_challenge_then_denied() -> None:
    a, stranger = Member.new(), Member.new()
    core = make_core([a])
    sess = login(core, stranger, ("10.0.0.9", 9))
    assert sess.state is ClientState.CLOSED
    assert Refused(DenyReason.AUTH_FAILED) in list(sess.events())
    assert core.sessions == 0 and core.stats.auth_failed == 1


def test_member_identity_with_wrong_wireguard_key_is_refused() -> None:
    a = Member.new()
    core = make_core([a])
    impostor = Member(a.identity, Member.new().wg)
    sess = login(core, impostor, ("10.0.0.1", 1))
    assert Refused(DenyReason.AUTH_FAILED) in list(sess.events())


def test_bad_signature_is_refused_like_a_non_member() -> None:
    a = Member.new()
    core = make_core([a])
    conn = ("10.0.0.1", 1)
    [(_, ch)] = feed(core, conn, marshal_frame(ClientHello(a.verify_key, a.wg)), 1.0)
    nonce = parse_frame(ch).nonce  # type: ignore[union-attr]
    other = SigningKey.generate()  # signs with a key that is not a's
    sig = other.sign(wire.auth_message(NETWORK_ID, "home", nonce, a.verify_key, a.wg))
    [(_, reply)] = feed(core, conn, marshal_frame(ChallengeResponse(a.verify_key, a.wg, nonce, sig)), 1.0)
    assert parse_frame(reply) == Denied(DenyReason.AUTH_FAILED)
    # A signature for another mesh (network id) is refused too.
    sig = a.identity.sign(wire.auth_message("cd" * 16, "home", nonce, a.verify_key, a.wg))
    [(_, reply)] = feed(core, conn, marshal_frame(ChallengeResponse(a.verify_key, a.wg, nonce, sig)), 1.0)
    assert parse_frame(reply) == Denied(DenyReason.AUTH_FAILED)


def test_challenge_is_bound_to_source_and_expires() -> None:
    a = Member.new()
    core = make_core([a])
    conn = ("10.0.0.1", 1)
    [(_, ch)] = feed(core, conn, marshal_frame(ClientHello(a.verify_key, a.wg)), 1.0)
    nonce = parse_frame(ch).nonce  # type: ignore[union-attr]
    sig = a.identity.sign(wire.auth_message(NETWORK_ID, "home", nonce, a.verify_key, a.wg))
    resp = marshal_frame(ChallengeResponse(a.verify_key, a.wg, nonce, sig))
    [(_, r1)] = feed(core, ("10.0.0.66", 1), resp, 1.0)  # replayed from elsewhere
    assert parse_frame(r1) == Denied(DenyReason.STALE_CHALLENGE)
    [(_, r2)] = feed(core, conn, resp, 1.0 + server_core.CHALLENGE_LIFETIME_S + 0.5)  # too late
    assert parse_frame(r2) == Denied(DenyReason.STALE_CHALLENGE)
    [(_, r3)] = feed(core, conn, resp, 2.0)
    assert isinstance(parse_frame(r3), Welcome)


def test_stale_challenge_makes_the_client_start_over() -> None:
    a = Member.new()
    core = make_core([a])
    sess = ClientSession(a.identity, a.wg, NETWORK_ID, counter_rand(), "home")
    sess.connect(0.0)
    [hello] = sess.data_to_send()
    [(_, ch)] = feed(core, ("h", 1), hello, 0.0)
    sess.receive_frame(ch, 0.0)
    [resp] = sess.data_to_send()
    [(_, denied)] = feed(core, ("h", 1), resp, 30.0)
    sess.receive_frame(denied, 30.0)
    assert sess.state is ClientState.HELLO_SENT
    assert parse_frame(sess.data_to_send()[0]) == ClientHello(a.verify_key, a.wg)


def test_unauthenticated_frames_never_reveal_sessions() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    login(core, a, ("10.0.0.1", 1))
    probe = ("10.0.0.99", 5)
    replies = []
    for frame in (SendPacket(TOKEN, a.wg, b"x"), KeepAlive(TOKEN), Ping(TOKEN, bytes(8)),
                  RecvPacket(a.wg, b"x"), Welcome(TOKEN, 1), Pong(bytes(8))):
        replies += feed(core, probe, marshal_frame(frame), 1.0)
    assert all(dst == probe for dst, _ in replies)
    assert {type(parse_frame(r)) for _, r in replies} <= {Denied}
    assert core.stats.packets_out == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(frames_st, st.binary(max_size=80)), max_size=10))
def test_fuzz_unauthenticated_sender_gets_only_challenge_or_denied(datas: list[bytes]) -> None:
    a = Member.new()
    core = make_core([a])
    login(core, a, ("10.0.0.1", 1))
    for data in datas:
        for dst, out in feed(core, ("10.9.9.9", 9), data, 1.0):
            assert dst == ("10.9.9.9", 9)
            assert isinstance(parse_frame(out), Challenge | Denied)
    assert core.sessions == 1


def test_wrong_token_from_a_known_address_is_dropped_silently() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    login(core, a, ("10.0.0.1", 1))
    login(core, b, ("10.0.0.2", 2))
    spoofed = marshal_frame(SendPacket(bytes(8), b.wg, b"x"))
    assert feed(core, ("10.0.0.1", 1), spoofed, 1.0) == []
    assert core.stats.drops["bad_token"] == 1 and core.sessions == 2


def test_relay_restart_no_session_makes_client_reconnect() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    sa = login(core, a, ("10.0.0.1", 1))
    list(sa.events())
    fresh = make_core([a, b])  # the relay restarted: it knows nobody
    frame = sa.send_packet(b.wg, b"x")
    assert frame is not None
    [(_, reply)] = feed(fresh, ("10.0.0.1", 1), frame, 1.0)
    sa.receive_frame(reply, 1.0)
    assert sa.state is ClientState.CLOSED
    assert isinstance(sa.next_event(), ConnectionLost)


def test_no_session_replies_are_rate_limited() -> None:
    core = make_core([])
    frame = marshal_frame(KeepAlive(TOKEN))
    replies = sum(len(feed(core, ("10.0.0.1", i), frame, 5.0)) for i in range(1000))
    assert replies <= server_core.NO_SESSION_REPLIES_PER_S + 1


def _unauthenticated_frames(stranger: Member) -> dict[str, bytes]:
    header = bytearray(marshal_frame(KeepAlive(TOKEN)))
    header[4] = wire.VERSION + 1  # another protocol version: answered "unsupported version"
    return {
        "version mismatch": bytes(header),
        "hello": marshal_frame(ClientHello(stranger.verify_key, stranger.wg)),
        "bad challenge response": marshal_frame(ChallengeResponse(stranger.verify_key, stranger.wg, bytes(32),
                                                                  bytes(64))),
        "no session": marshal_frame(KeepAlive(TOKEN)),
    }


@pytest.mark.parametrize("kind", ["version mismatch", "hello", "bad challenge response", "no session"])
def test_every_reply_to_an_unauthenticated_frame_is_rate_limited(kind: str) -> None:
    """A relay is no reflector: a flood from one (spoofed) address gets a bounded answer, a flood
    from many addresses too, and a member elsewhere still logs in meanwhile."""
    a = Member.new()
    core = make_core([a])
    frame = _unauthenticated_frames(Member.new())[kind]
    one_source = sum(len(feed(core, ("10.9.9.9", 1000 + i), frame, 1.0)) for i in range(2000))
    assert 1 <= one_source <= server_core.UNAUTH_SOURCE_BURST
    many = sum(len(feed(core, (f"10.{i // 250}.{i % 250}.1", 9), frame, 1.0)) for i in range(3000))
    assert many <= server_core.UNAUTH_REPLIES_PER_S
    assert core.stats.drops["unauthenticated_reply_limited"] > 0
    # A second later the budget has refilled: a member logs in.
    assert login(core, a, ("10.200.0.1", 1), now=2.5).state is ClientState.CONNECTED


def test_an_expired_state_stops_admissions_but_keeps_sessions() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    core.set_members(NETWORK_ID, {m.verify_key: m.wg for m in (a, b)}, 1.0, admit_until=10.0)
    sa = login(core, a, ("10.0.0.1", 1), now=5.0)
    assert sa.state is ClientState.CONNECTED
    sb = login(core, b, ("10.0.0.2", 2), now=10.0)  # the state has expired: no new logins
    assert Refused(DenyReason.AUTH_FAILED) in list(sb.events())
    assert core.sessions == 1 and core.stats.drops["state_expired"] == 1
    frame = sa.send_packet(a.wg, b"still relayed")
    assert frame is not None and feed(core, ("10.0.0.1", 1), frame, 11.0)  # a keeps its session
    core.set_members(NETWORK_ID, {m.verify_key: m.wg for m in (a, b)}, 12.0, admit_until=100.0)  # renewed
    assert login(core, b, ("10.0.0.2", 2), now=13.0).state is ClientState.CONNECTED


def test_revocation_drops_the_session() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    login(core, a, ("10.0.0.1", 1))
    sb = login(core, b, ("10.0.0.2", 2))
    core.set_members(NETWORK_ID, {a.verify_key: a.wg}, 5.0)
    out, events = drain(core)
    assert out == [(("10.0.0.2", 2), marshal_frame(Denied(DenyReason.REVOKED)))]
    assert [(e.conn, e.reason, e.hang_up) for e in events] == [(("10.0.0.2", 2), "revoked", True)]
    assert core.sessions == 1
    sb.receive_frame(out[0][1], 5.0)
    assert Refused(DenyReason.REVOKED) in list(sb.events())
    # And a's packets to b now go nowhere.
    sa_frame = marshal_frame(SendPacket(core.session_of(("10.0.0.1", 1)).token, b.wg, b"x"))  # type: ignore[union-attr]
    assert feed(core, ("10.0.0.1", 1), sa_frame, 6.0) == []
    assert core.stats.drops["no_destination"] == 1


def test_rate_limit_per_client() -> None:
    a, b, c = Member.new(), Member.new(), Member.new()
    core = make_core([a, b, c], rate_bytes_per_s=10_000, burst_bytes=10_000)
    sa, sc = login(core, a, "A"), login(core, c, "C")
    login(core, b, "B")
    sent_a = sum(len(feed(core, "A", sa.send_packet(b.wg, bytes(1000)) or b"", 1.0)) for _ in range(100))
    assert 8 <= sent_a <= 10  # the burst, then nothing
    assert core.stats.drops["rate_limited"] >= 90
    # c has its own bucket: a's flood does not spend it.
    sent_c = sum(len(feed(core, "C", sc.send_packet(b.wg, bytes(1000)) or b"", 1.0)) for _ in range(5))
    assert sent_c == 5
    # Tokens come back with time.
    assert len(feed(core, "A", sa.send_packet(b.wg, bytes(1000)) or b"", 2.0)) == 1


def test_idle_sessions_expire() -> None:
    a = Member.new()
    core = make_core([a], session_idle_s=10.0)
    login(core, a, "A", now=1.0)
    assert core.next_deadline() == 11.0
    core.handle_timer(5.0)
    assert core.sessions == 1
    core.handle_timer(11.5)
    assert core.sessions == 0
    assert drain(core)[1][-1].reason == "idle"  # type: ignore[union-attr]


def test_same_device_from_new_address_replaces_old_session() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b])
    login(core, a, "A1")
    sb = login(core, b, "B")
    again = ClientSession(a.identity, a.wg, NETWORK_ID, counter_rand(), "home")
    again.connect(1.0)
    others = pump(core, again, "A2", 1.0)
    assert core.sessions == 2 and again.state is ClientState.CONNECTED
    assert [(e.conn, e.reason, e.hang_up) for e in others if isinstance(e, ClientDropped)] == [("A1", "replaced", True)]
    frame = sb.send_packet(a.wg, b"hi")
    assert frame is not None
    assert [dst for dst, _ in feed(core, "B", frame, 2.0)] == ["A2"]


def test_relay_full() -> None:
    a, b = Member.new(), Member.new()
    core = make_core([a, b], max_sessions=1)
    login(core, a, "A")
    sb = login(core, b, "B")
    assert Refused(DenyReason.RELAY_FULL) in list(sb.events())


def test_stun_is_answered_with_the_source_address() -> None:
    core = make_core([])
    txid = stun.new_txid(lambda n: bytes(range(n)))
    core.receive_stun(("192.0.2.5", 40000), stun.marshal_binding_request(txid), 1.0)
    [(dst, reply)] = drain(core)[0]
    assert dst == ("192.0.2.5", 40000)
    assert stun.parse_binding_response(reply) == (txid, addr_port("192.0.2.5", 40000))
    core.receive_stun(("192.0.2.5", 1), b"\x00\x01junk", 1.0)
    assert drain(core) == ([], []) and core.stats.drops["bad_stun"] == 1


def test_stun_answers_are_rate_limited_per_source() -> None:
    """The relay answers STUN by design, but it is no reflector toward a spoofed address either."""
    core = make_core([])
    request = stun.marshal_binding_request(stun.new_txid(lambda n: bytes(range(n))))
    for i in range(1000):
        core.receive_stun(("192.0.2.5", 1000 + i), request, 1.0)
    assert 1 <= len(drain(core)[0]) <= server_core.UNAUTH_SOURCE_BURST
    core.receive_stun(("192.0.2.6", 1), request, 1.0)  # another address is answered
    assert len(drain(core)[0]) == 1


def test_relay_identity_is_checked_by_the_client() -> None:
    a = Member.new()
    relay_key = SigningKey.generate()
    core = make_core([a], signing_key=relay_key)
    sess = login(core, a, "A", relay_key=relay_key.public())
    assert sess.state is ClientState.CONNECTED
    assert Connected(wire.PING_INTERVAL_S, True) in list(sess.events())
    # A relay with another key (or none) does not satisfy the client: it times out instead.
    other = make_core([a], signing_key=SigningKey.generate())
    sess2 = login(other, a, "A", relay_key=relay_key.public())
    assert sess2.state is ClientState.RESPONSE_SENT
    sess2.handle_timer(1.0 + client_core.HANDSHAKE_TIMEOUT_S)
    told, lost = sess2.next_event(), sess2.next_event()
    assert isinstance(told, client_core.NotTheListedRelay) and "not signed by the listed identity key" in told.reason
    assert isinstance(lost, ConnectionLost)


def test_client_ignores_a_challenge_naming_another_relay() -> None:
    a = Member.new()
    core = make_core([a], name="evil")
    sess = login(core, a, "A", relay_name="home")
    assert sess.state is ClientState.HELLO_SENT  # never signed anything for "evil"


def test_client_timers_hello_retry_ping_and_silence() -> None:
    a = Member.new()
    core = make_core([a])
    sess = ClientSession(a.identity, a.wg, NETWORK_ID, counter_rand(), "home")
    sess.connect(0.0)
    sess.data_to_send()  # the first hello is lost
    assert sess.next_deadline() == client_core.HELLO_RETRY_S
    sess.handle_timer(client_core.HELLO_RETRY_S)
    pump(core, sess, "A", client_core.HELLO_RETRY_S)
    assert sess.state is ClientState.CONNECTED
    list(sess.events())
    t = client_core.HELLO_RETRY_S
    assert sess.next_deadline() == t + wire.PING_INTERVAL_S
    sess.handle_timer(t + wire.PING_INTERVAL_S)
    [ping] = sess.data_to_send()
    [(_, pong)] = feed(core, "A", ping, t + wire.PING_INTERVAL_S)
    sess.receive_frame(pong, t + wire.PING_INTERVAL_S + 0.02)
    [ev] = list(sess.events())
    assert isinstance(ev, PongReceived) and abs(ev.rtt_s - 0.02) < 1e-9
    last_rx = t + wire.PING_INTERVAL_S + 0.02
    for k in range(1, 4):  # the relay goes silent
        sess.handle_timer(t + wire.PING_INTERVAL_S * (k + 1))
    sess.handle_timer(last_rx + client_core.SILENCE_TIMEOUT_S)
    assert sess.state is ClientState.CLOSED
    assert isinstance(sess.next_event(), ConnectionLost)


def test_client_handshake_timeout() -> None:
    a = Member.new()
    sess = ClientSession(a.identity, a.wg, NETWORK_ID, counter_rand())
    sess.connect(0.0)
    for t in range(1, 5):
        sess.handle_timer(float(t))
    assert len(sess.data_to_send()) == 5  # first hello and four retries
    sess.handle_timer(client_core.HANDSHAKE_TIMEOUT_S)
    assert sess.next_event() == ConnectionLost("handshake timed out")
    assert sess.next_deadline() is None


def test_client_local_errors() -> None:
    a = Member.new()
    sess = ClientSession(a.identity, a.wg, NETWORK_ID, counter_rand())
    assert sess.send_packet(a.wg, b"x") is None
    with pytest.raises(wire.LocalProtocolError):
        sess.ping(0.0)
    sess.connect(0.0)
    with pytest.raises(wire.LocalProtocolError):
        sess.connect(0.0)


def test_token_bucket() -> None:
    b = server_core.TokenBucket.full(100.0, 50.0, 0.0)
    assert b.take(50, 0.0) and not b.take(1, 0.0)
    assert b.take(10, 0.1) and not b.take(1, 0.1)
    assert b.take(50, 100.0) and not b.take(1, 100.0)  # capped at the burst


def test_close_frame_ends_the_session_at_once() -> None:
    a = Member.new()
    core = make_core([a])
    sess = login(core, a, "A")
    sess.close()
    [frame] = sess.data_to_send()
    assert parse_frame(frame) == wire.Close(sess._token)
    core.receive("A", frame, 2.0)
    out, events = drain(core)
    assert out == [] and [(e.reason, e.hang_up) for e in events] == [("left", True)]
    assert core.sessions == 0
    # A Close with the wrong token (spoofed) is ignored.
    sess2 = login(core, a, "A")
    assert feed(core, "A", marshal_frame(wire.Close(bytes(8))), 3.0) == []
    assert core.sessions == 1 and sess2.state is ClientState.CONNECTED
