"""Disco messages: hex round trips, sealing, unknown senders, tampering, fuzz."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.errors import ParseError
from meshctl.keys import DiscoPrivate, NodePublic
from meshctl.nat import disco, stun
from meshctl.nat.addr import AddrPort, parse_addr_port

ALICE = DiscoPrivate(bytes([1] * 32))
BOB = DiscoPrivate(bytes([2] * 32))
MALLORY = DiscoPrivate(bytes([3] * 32))
NODE_KEY = NodePublic(bytes(range(32)))
TXID = bytes(range(0xA0, 0xAC))


def counter_rand() -> Callable[[int], bytes]:
    """Deterministic 'randomness' so sealed packets have stable bytes."""
    counter = itertools.count()
    return lambda n: bytes((next(counter) & 0xFF) for _ in range(n))


@pytest.mark.parametrize(
    ("msg", "hex_"),
    [
        (disco.Ping(TXID, NODE_KEY),
         "0100" + TXID.hex() + bytes(range(32)).hex()),
        (disco.Pong(TXID, parse_addr_port("198.51.100.7:41641")),
         "0200" + TXID.hex() + "00000000000000000000ffffc6336407" + "a2a9"),
        (disco.Pong(TXID, parse_addr_port("[2001:db8::1]:1")),
         "0200" + TXID.hex() + "20010db8000000000000000000000001" + "0001"),
        (disco.CallMeMaybe(()), "0300"),
        (disco.CallMeMaybe((parse_addr_port("10.0.0.1:51820"), parse_addr_port("[::1]:2"))),
         "0300" + "00000000000000000000ffff0a000001ca6c" + "00000000000000000000000000000001" + "0002"),
    ],
)
def test_inner_round_trip_hex(msg: disco.DiscoMessage, hex_: str) -> None:
    assert disco.marshal_message(msg).hex() == hex_
    assert disco.parse_message(bytes.fromhex(hex_)) == msg


def test_ping_and_pong_ignore_trailing_bytes_for_forward_compat() -> None:
    ping = disco.marshal_message(disco.Ping(TXID, NODE_KEY))
    assert disco.parse_message(ping + b"future field") == disco.Ping(TXID, NODE_KEY)
    pong = disco.Pong(TXID, parse_addr_port("1.2.3.4:5"))
    assert disco.parse_message(disco.marshal_message(pong) + b"\x00") == pong


def test_call_me_maybe_is_strict() -> None:
    one = disco.marshal_message(disco.CallMeMaybe((parse_addr_port("1.2.3.4:5"),)))
    with pytest.raises(disco.MalformedMessageError):
        disco.parse_message(one + b"\x00")
    too_many = bytes([disco.TYPE_CALL_ME_MAYBE, 0]) + bytes(18) * (disco.MAX_ENDPOINTS + 1)
    with pytest.raises(disco.MalformedMessageError):
        disco.parse_message(too_many)


@pytest.mark.parametrize("msg", [disco.Ping(TXID, NODE_KEY),
                                 disco.Pong(TXID, parse_addr_port("1.2.3.4:5"))])
def test_inner_truncations_refused(msg: disco.DiscoMessage) -> None:
    raw = disco.marshal_message(msg)
    for cut in range(len(raw)):
        with pytest.raises(disco.MalformedMessageError):
            disco.parse_message(raw[:cut])


def test_unknown_type_refused() -> None:
    with pytest.raises(disco.MalformedMessageError):
        disco.parse_message(b"\x09\x00" + bytes(60))


def test_sealed_packet_golden_and_layout() -> None:
    box = disco.DiscoBox(ALICE, counter_rand())
    packet = box.seal(disco.Ping(TXID, NODE_KEY), BOB.public())
    assert packet[:6] == disco.MAGIC
    assert packet[6:38] == ALICE.public().raw
    assert packet[38:50] == bytes(range(12))
    assert len(packet) == disco.HEADER_LEN + 2 + 12 + 32 + disco.TAG_LEN
    # Decrypt independently, following the module docstring, to pin the documented format.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"meshctl disco v1" + ALICE.public().raw + BOB.public().raw
               ).derive(BOB.shared_secret(ALICE.public()))
    inner = ChaCha20Poly1305(key).decrypt(packet[38:50], packet[50:], packet[:38])
    assert inner == disco.marshal_message(disco.Ping(TXID, NODE_KEY))
    assert packet.hex() == GOLDEN_PING_PACKET


GOLDEN_PING_PACKET = (
    "4d43f09f948da4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a2090001"
    "02030405060708090a0b3045d7daf155cb44aa515f0ff79a4623f23cd0f19c18f25b8bcdcb7d9b88"
    "d3ce55038f16d9b2c23fd16f6a56bd2e77b04c078c7826db100d2a0904ad5117"
)


def test_open_round_trip_and_directions_differ() -> None:
    alice, bob = disco.DiscoBox(ALICE, counter_rand()), disco.DiscoBox(BOB, counter_rand())
    msg = disco.CallMeMaybe((parse_addr_port("203.0.113.9:41641"),))
    a_to_b = alice.seal(msg, bob.public)
    b_to_a = bob.seal(msg, alice.public)
    # Same nonce (both counters start at 0), same plaintext: distinct keys give distinct boxes.
    assert a_to_b[50:] != b_to_a[50:]
    assert bob.open(a_to_b, {alice.public}) == (alice.public, msg)
    assert alice.open(b_to_a, {bob.public}) == (bob.public, msg)


def test_unknown_sender_dropped_before_crypto() -> None:
    mallory = disco.DiscoBox(MALLORY, counter_rand())
    bob = disco.DiscoBox(BOB, counter_rand())
    packet = mallory.seal(disco.Ping(TXID, NODE_KEY), bob.public)
    with pytest.raises(disco.UnknownSenderError):
        bob.open(packet, {ALICE.public()})


def test_spoofed_sender_key_does_not_open() -> None:
    # Mallory writes Alice's public key in the header: the box was not made with Alice's key.
    mallory = disco.DiscoBox(MALLORY, counter_rand())
    bob = disco.DiscoBox(BOB, counter_rand())
    packet = mallory.seal(disco.Ping(TXID, NODE_KEY), bob.public)
    forged = packet[:6] + ALICE.public().raw + packet[38:]
    with pytest.raises(disco.DecryptError):
        bob.open(forged, {ALICE.public()})


def test_packet_for_someone_else_does_not_open() -> None:
    alice = disco.DiscoBox(ALICE, counter_rand())
    packet = alice.seal(disco.Ping(TXID, NODE_KEY), MALLORY.public())
    with pytest.raises(disco.DecryptError):
        disco.DiscoBox(BOB, counter_rand()).open(packet, {ALICE.public()})


def test_every_bit_flip_is_refused() -> None:
    alice, bob = disco.DiscoBox(ALICE, counter_rand()), disco.DiscoBox(BOB, counter_rand())
    packet = alice.seal(disco.Pong(TXID, parse_addr_port("1.2.3.4:5")), bob.public)
    for bit in range(len(packet) * 8):
        bad = bytearray(packet)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(disco.DiscoError):
            bob.open(bytes(bad), {alice.public})


def test_replay_opens_again_and_is_harmless_by_design() -> None:
    # `open` is stateless: a replayed packet yields the same message; the path manager
    # ignores pongs whose txid it no longer waits for (tested in test_paths.py).
    alice, bob = disco.DiscoBox(ALICE, counter_rand()), disco.DiscoBox(BOB, counter_rand())
    packet = alice.seal(disco.Pong(TXID, parse_addr_port("1.2.3.4:5")), bob.public)
    assert bob.open(packet, {alice.public}) == bob.open(packet, {alice.public})


def test_own_packets_are_dropped() -> None:
    alice = disco.DiscoBox(ALICE, counter_rand())
    packet = alice.seal(disco.Ping(TXID, NODE_KEY), alice.public)
    with pytest.raises(disco.UnknownSenderError):
        alice.open(packet, {alice.public})


def test_sizes_bounded() -> None:
    bob = disco.DiscoBox(BOB, counter_rand())
    big = disco.MAGIC + ALICE.public().raw + bytes(disco.MAX_PACKET_LEN)
    with pytest.raises(disco.TooLargeError):
        bob.open(big, {ALICE.public()})
    for short in (b"", disco.MAGIC, disco.MAGIC + bytes(disco.HEADER_LEN + disco.TAG_LEN - 7)):
        with pytest.raises(disco.NotDiscoError):
            bob.open(short, {ALICE.public()})
    with pytest.raises(ValueError):
        disco.CallMeMaybe((parse_addr_port("1.2.3.4:5"),) * (disco.MAX_ENDPOINTS + 1))


def test_magic_distinct_from_stun_and_wireguard() -> None:
    assert not stun.is_stun(disco.MAGIC + bytes(60))
    assert disco.MAGIC[0] not in (1, 2, 3, 4)  # WireGuard message types
    assert not disco.looks_like_disco(b"\x01\x00\x00\x00" + bytes(144))
    assert not disco.looks_like_disco(stun.marshal_binding_request(bytes(12)))


def test_errors_are_parse_errors() -> None:
    for cls in (disco.NotDiscoError, disco.TooLargeError, disco.UnknownSenderError,
                disco.DecryptError, disco.MalformedMessageError):
        assert issubclass(cls, ParseError)


def test_summary() -> None:
    assert disco.summary(disco.CallMeMaybe(())) == "call-me-maybe (none)"
    assert disco.summary(disco.Pong(TXID, parse_addr_port("1.2.3.4:5"))) == "pong tx=a0a1a2 src=1.2.3.4:5"


endpoints = st.builds(
    AddrPort,
    st.one_of(st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
              st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)).filter(
                  lambda a: a.ipv4_mapped is None)),
    st.integers(0, 65535),
)
messages = st.one_of(
    st.builds(disco.Ping, st.binary(min_size=12, max_size=12),
              st.builds(NodePublic, st.binary(min_size=32, max_size=32))),
    st.builds(disco.Pong, st.binary(min_size=12, max_size=12), endpoints),
    st.builds(disco.CallMeMaybe, st.lists(endpoints, max_size=disco.MAX_ENDPOINTS).map(tuple)),
)


@given(msg=messages)
def test_sealed_round_trip_property(msg: disco.DiscoMessage) -> None:
    alice, bob = disco.DiscoBox(ALICE, counter_rand()), disco.DiscoBox(BOB, counter_rand())
    assert disco.parse_message(disco.marshal_message(msg)) == msg
    assert bob.open(alice.seal(msg, bob.public), {alice.public}) == (alice.public, msg)


@settings(max_examples=1000)
@given(data=st.binary(max_size=1300))
def test_fuzz_inner_parser(data: bytes) -> None:
    try:
        disco.parse_message(data)
    except disco.DiscoError:
        pass


@settings(max_examples=500)
@given(tail=st.binary(max_size=1300), known=st.booleans())
def test_fuzz_open(tail: bytes, known: bool) -> None:
    bob = disco.DiscoBox(BOB, counter_rand())
    allowed = {ALICE.public()} if known else set()
    for packet in (tail, disco.MAGIC + tail, disco.MAGIC + ALICE.public().raw + tail):
        try:
            bob.open(packet, allowed)
        except disco.DiscoError:
            pass
