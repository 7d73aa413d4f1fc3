"""UAPI codec: golden set text, a reply captured from wireguard-go, and fuzzing of the parser."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wglab import fixed_private

from meshctl.wg.config import DeviceConfig, DeviceState, PeerConfig, PeerState, plan_update
from meshctl.wg.uapi import (
    GET_REQUEST,
    GetReply,
    UapiParseError,
    marshal_set,
    parse_get_reply,
    parse_set_reply,
    reply_complete,
)

SELF = fixed_private(1)
P2, P3 = fixed_private(2).public(), fixed_private(3).public()
H_SELF = SELF.private_bytes_for_device().hex()
H2, H3 = P2.raw.hex(), P3.raw.hex()

# Shape of a real `get=1` reply from wireguard-go 0.0.20220316 (keys replaced by fixed ones).
CAPTURED = (
    f"private_key={H_SELF}\nlisten_port=51820\n"
    f"public_key={H2}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
    "endpoint=10.0.0.2:51820\nlast_handshake_time_sec=1700000123\n"
    "last_handshake_time_nsec=5000\ntx_bytes=1234\nrx_bytes=5678\n"
    "persistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\nallowed_ip=fd7a::2/128\n"
    f"public_key={H3}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
    "endpoint=[2001:db8::3]:4000\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
    "tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
    "errno=0\n\n"
).encode()


def test_get_request_bytes() -> None:
    assert GET_REQUEST == b"get=1\n\n"


def test_parse_captured_reply() -> None:
    reply = parse_get_reply(CAPTURED)
    assert reply.errno == 0
    state = reply.state
    assert state.private_key == SELF and state.listen_port == 51820
    assert state.peer(P2) == PeerState(
        P2, "10.0.0.2:51820", (ipaddress.ip_network("100.64.0.2/32"),
                               ipaddress.ip_network("fd7a::2/128")),
        25, last_handshake=1700000123, rx_bytes=5678, tx_bytes=1234)
    assert state.peer(P3) == PeerState(P3, "[2001:db8::3]:4000", (), 0, None, 0, 0)


def test_fresh_device_reply() -> None:
    assert parse_get_reply(b"listen_port=45184\nerrno=0\n\n") == GetReply(
        0, DeviceState(listen_port=45184))


def test_errno_is_reported_not_raised() -> None:
    assert parse_get_reply(b"errno=22\n\n").errno == 22
    assert parse_set_reply(b"errno=0\n\n") == 0
    assert parse_set_reply(b"errno=22\n\n") == 22


@pytest.mark.parametrize("bad", [
    b"", b"errno=0\n", b"listen_port=1\n\n", b"errno=x\n\n", b"junk\nerrno=0\n\n",
    b"listen_port=70000\nerrno=0\n\n", b"private_key=abc\nerrno=0\n\n",
    b"public_key=" + b"zz" * 32 + b"\nerrno=0\n\n", b"errno=0\nlisten_port=1\n\n",
    b"public_key=" + b"00" * 32 + b"\nendpoint=host:1\nerrno=0\n\n",
    b"public_key=" + b"00" * 32 + b"\nallowed_ip=1.2.3.4/40\nerrno=0\n\n",
    b"public_key=" + b"00" * 32 + b"\npublic_key=" + b"00" * 32 + b"\nerrno=0\n\n",
    b"listen_port=\xff\nerrno=0\n\n",
    b"public_key=" + b"00" * 32 + b"\nrx_bytes=" + b"9" * 30 + b"\nerrno=0\n\n",
])
def test_malformed_replies(bad: bytes) -> None:
    with pytest.raises(UapiParseError):
        parse_get_reply(bad)


def test_reply_complete_only_at_the_end() -> None:
    # Read byte by byte: no prefix looks complete, the whole reply does.
    assert not any(reply_complete(CAPTURED[:i]) for i in range(len(CAPTURED)))
    assert reply_complete(CAPTURED)


def test_trailing_bytes_after_reply_are_refused() -> None:
    with pytest.raises(UapiParseError):
        parse_get_reply(CAPTURED + b"listen_port=1\n\n")


def test_marshal_set_golden_keepalive_last() -> None:
    cfg = DeviceConfig(SELF, 51820, (
        PeerConfig(P2, (ipaddress.ip_network("100.64.0.2/32"),), "10.0.0.2:51820", 25),))
    state = DeviceState(listen_port=1, peers=(PeerState(P3, allowed_ips=()),))
    text = marshal_set(plan_update(state, cfg)).decode()
    assert text == (
        "set=1\n"
        f"private_key={H_SELF}\n"
        "listen_port=51820\n"
        f"public_key={H2}\n"
        "endpoint=10.0.0.2:51820\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=100.64.0.2/32\n"
        f"public_key={H3}\n"
        "remove=true\n"
        f"public_key={H2}\n"
        "update_only=true\n"
        "persistent_keepalive_interval=25\n"
        "\n"
    )


def test_marshal_then_parse_round_trip_of_peers() -> None:
    """What we write, rendered the way wireguard-go answers, parses back to the config."""
    cfg = DeviceConfig(SELF, 51820, (
        PeerConfig(P2, (ipaddress.ip_network("100.64.0.2/32"),
                        ipaddress.ip_network("fd7a::2/128")), "[fd00::9]:7", 25),))
    lines = marshal_set(plan_update(DeviceState(), cfg)).decode().splitlines()[1:-1]
    echoed = [ln for ln in lines if not ln.startswith(("replace_allowed_ips", "update_only"))]
    # The second public_key line re-selects the same peer; wireguard-go reports it once.
    seen, reply = set(), []
    for ln in echoed:
        if ln.startswith("public_key="):
            if ln in seen:
                continue
            seen.add(ln)
        reply.append(ln)
    state = parse_get_reply(("\n".join(reply) + "\nerrno=0\n\n").encode()).state
    assert plan_update(state, cfg).is_empty()


# --- fuzzing ---------------------------------------------------------------------------------

KEYS = ["private_key", "listen_port", "fwmark", "public_key", "preshared_key", "endpoint",
        "allowed_ip", "persistent_keepalive_interval", "last_handshake_time_sec", "rx_bytes",
        "tx_bytes", "protocol_version", "errno", "remove", "x"]
VALUES = st.one_of(
    st.sampled_from(["0", "25", "65536", "1.2.3.4:5", "[::1]:9", "::/0", "10.0.0.0/8", "-1",
                     "00" * 32, "ff" * 31, "true", ""]),
    st.text(alphabet="0123456789abcdef:./[]=-x", max_size=70),
)
LINE = st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_parser_total_on_bytes(data: bytes) -> None:
    try:
        result = parse_get_reply(data)
    except UapiParseError:
        return
    assert isinstance(result, GetReply)


@settings(max_examples=250, deadline=None)
@given(st.lists(LINE, max_size=20), st.booleans())
def test_parser_total_on_plausible_lines(lines: list[str], with_errno: bool) -> None:
    data = ("\n".join(lines + (["errno=0"] if with_errno else [])) + "\n\n").encode()
    try:
        result = parse_get_reply(data)
    except UapiParseError:
        return
    assert isinstance(result.state, DeviceState)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_set_reply_parser_total(data: bytes) -> None:
    try:
        assert parse_set_reply(data) >= 0
    except UapiParseError:
        pass


def test_oversized_reply_refused_quickly() -> None:
    from meshctl.wg.uapi import MAX_REPLY_BYTES

    with pytest.raises(UapiParseError, match="larger"):
        parse_get_reply(b"x" * (MAX_REPLY_BYTES + 1))


def test_negative_errno_from_wireguard_go_is_an_error_not_garbage() -> None:
    from meshctl.wg.uapi import parse_set_reply

    assert parse_set_reply(b"errno=-98\n\n") == 98
    assert parse_set_reply(b"errno=0\n\n") == 0


# --- the bytes-level parser agrees with the line-by-line one it replaced ----------------------

from uapi_reference import reference_parse_get_reply  # noqa: E402

PEER_KEYS = [H2, H3, fixed_private(4).public().raw.hex()]
REAL_LINE = st.one_of(
    LINE,
    st.sampled_from([f"public_key={k}" for k in PEER_KEYS] + [
        "endpoint=10.200.1.2:51820", "endpoint=010.1.1.1:5", "endpoint=1.2.3.4:05", "endpoint=1.2.3.4:65536",
        "endpoint=[fd00::1]:7", "endpoint=[FD00:0::1]:7", "allowed_ip=100.64.0.2/32", "allowed_ip=100.64.0.3/24",
        "allowed_ip=fd7a::2/128", "allowed_ip=FD7A:0:0::2/64", "allowed_ip=::ffff:1.2.3.4/128",
        "persistent_keepalive_interval=25", "persistent_keepalive_interval=65536", "rx_bytes=1",
        "last_handshake_time_sec=1700000000", "listen_port=51820", f"private_key={H_SELF}",
        f"public_key={'0' * 63} ", "errno=-98", "listen_port=٣"]),
)


def outcome(parse, data: bytes):  # type: ignore[no-untyped-def]
    try:
        return parse(data)
    except UapiParseError:
        return UapiParseError


@settings(max_examples=600, deadline=None)
@given(st.lists(REAL_LINE, max_size=30), st.booleans())
def test_parser_agrees_with_the_reference_on_plausible_replies(lines: list[str], with_errno: bool) -> None:
    data = ("\n".join(lines + (["errno=0"] if with_errno else [])) + "\n\n").encode()
    assert outcome(parse_get_reply, data) == outcome(reference_parse_get_reply, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_agrees_with_the_reference_on_any_bytes(data: bytes) -> None:
    assert outcome(parse_get_reply, data) == outcome(reference_parse_get_reply, data)


def test_parser_agrees_with_the_reference_on_the_captured_reply() -> None:
    assert parse_get_reply(CAPTURED) == reference_parse_get_reply(CAPTURED)


def test_read_back_and_desired_prefixes_are_one_object() -> None:
    """The device's allowed IPs and the desired ones are the same objects (wg.config.network),
    so an empty plan at 10,000 peers compares them by identity."""
    from meshctl.wg.config import network

    want = network(4, int(ipaddress.IPv4Address("100.64.0.2")), 32)
    got = parse_get_reply(CAPTURED).state.peer(P2)
    assert got is not None and got.allowed_ips[0] is want
