"""STUN codec: RFC 5769 vectors, round trips, truncation, trailing bytes, fuzz."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.errors import ParseError
from meshctl.nat import stun
from meshctl.nat.addr import AddrPort


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 section 2 test vectors (public test data; FINGERPRINT makes each self-checking).
RFC_TXID = _hex("b7e7a701bc34d686fa87dfae")
RFC_REQUEST = _hex(
    """00010058 2112a442 b7e7a701bc34d686fa87dfae
    80220010 5354554e207465737420636c69656e74
    00240004 6e0001ff
    80290008 932ff9b151263b36
    00060009 6576746a3a68367659202020
    00080014 9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2
    80280004 e57a3bcf"""
)
RFC_RESPONSE_V4 = _hex(
    """0101003c 2112a442 b7e7a701bc34d686fa87dfae
    8022000b 7465737420766563746f7220
    00200008 0001a147e112a643
    00080014 2b91f599fd9e90c38c7489f92af9ba53f06be7d7
    80280004 c07d4c96"""
)
RFC_RESPONSE_V6 = _hex(
    """01010048 2112a442 b7e7a701bc34d686fa87dfae
    8022000b 7465737420766563746f7220
    00200014 0002a147 0113a9faa5d3f179bc25f4b5bed2b9d9
    00080014 a382954e4be67bf11784c97c8292c275bfe3ed41
    80280004 c8fb0b4c"""
)
RFC_MAPPED_V4 = AddrPort(ipaddress.ip_address("192.0.2.1"), 32853)
RFC_MAPPED_V6 = AddrPort(ipaddress.ip_address("2001:db8:1234:5678:11:2233:4455:6677"), 32853)


def test_rfc5769_ipv4_response() -> None:
    assert stun.parse_binding_response(RFC_RESPONSE_V4) == (RFC_TXID, RFC_MAPPED_V4)


def test_rfc5769_ipv6_response() -> None:
    assert stun.parse_binding_response(RFC_RESPONSE_V6) == (RFC_TXID, RFC_MAPPED_V6)


def test_rfc5769_request() -> None:
    assert stun.parse_binding_request(RFC_REQUEST) == RFC_TXID
    assert stun.is_stun(RFC_REQUEST)


def test_rfc5769_xor_address_encoding_matches() -> None:
    # Our encoder produces the RFC's XOR-MAPPED-ADDRESS bytes for both families.
    for mapped, attr in ((RFC_MAPPED_V4, "0001a147e112a643"),
                         (RFC_MAPPED_V6, "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")):
        msg = stun.marshal_binding_response(RFC_TXID, mapped, fingerprint=False)
        assert msg[24:] == _hex(attr)


def test_request_hex_golden() -> None:
    txid = bytes(range(12))
    assert stun.marshal_binding_request(txid, fingerprint=False).hex() == (
        "000100002112a442000102030405060708090a0b"
    )
    with_fp = stun.marshal_binding_request(txid)
    assert with_fp[:4] == _hex("00010008") and with_fp[20:24] == _hex("80280004")
    assert stun.parse_binding_request(with_fp) == txid


def test_response_with_software_and_fingerprint_round_trips() -> None:
    txid = os.urandom(12)
    msg = stun.marshal_binding_response(txid, RFC_MAPPED_V4, software="meshctl relay")
    assert stun.parse_binding_response(msg) == (txid, RFC_MAPPED_V4)


def test_mapped_address_fallback() -> None:
    # An RFC 3489 server: only MAPPED-ADDRESS (plain, not XORed).
    txid = bytes(12)
    value = bytes([0, 1]) + (4242).to_bytes(2, "big") + ipaddress.ip_address("198.51.100.7").packed
    msg = stun._message(stun.BINDING_SUCCESS, txid, stun._attr(stun.ATTR_MAPPED_ADDRESS, value),
                        fingerprint=False)
    assert stun.parse_binding_response(msg) == (txid, AddrPort(ipaddress.ip_address("198.51.100.7"), 4242))


def test_xor_preferred_over_mapped() -> None:
    txid = bytes(12)
    plain = bytes([0, 1]) + (1).to_bytes(2, "big") + bytes(4)
    attrs = stun._attr(stun.ATTR_MAPPED_ADDRESS, plain) + stun._attr(
        stun.ATTR_XOR_MAPPED_ADDRESS, stun._xor_address(RFC_MAPPED_V4, txid))
    msg = stun._message(stun.BINDING_SUCCESS, txid, attrs, fingerprint=True)
    assert stun.parse_binding_response(msg)[1] == RFC_MAPPED_V4


def test_new_txid_uses_injected_randomness() -> None:
    assert stun.new_txid(lambda n: b"\x07" * n) == b"\x07" * 12
    with pytest.raises(ValueError):
        stun.new_txid(lambda n: b"x")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", stun.NotStunError),
        (b"\x16\xfe\xfd" + bytes(40), stun.NotStunError),  # DTLS
        (b"\x01\x00\x00\x00" + bytes(28), stun.NotStunError),  # WireGuard handshake initiation
        (RFC_RESPONSE_V4[:4] + b"\x21\x12\xa4\x43" + RFC_RESPONSE_V4[8:], stun.NotStunError),
        (RFC_RESPONSE_V4 + b"\x00\x00\x00\x00", stun.MalformedMessageError),
        (RFC_REQUEST, stun.UnexpectedMessageError),
        (RFC_RESPONSE_V4[:-1] + bytes([RFC_RESPONSE_V4[-1] ^ 1]), stun.BadFingerprintError),
        (b"\x01\x11" + RFC_RESPONSE_V4[2:], stun.UnexpectedMessageError),  # error response
    ],
)
def test_response_errors_are_named(data: bytes, error: type[stun.StunError]) -> None:
    with pytest.raises(error):
        stun.parse_binding_response(data)


def test_fingerprint_must_be_last() -> None:
    txid = bytes(12)
    msg = stun.marshal_binding_request(txid)
    moved = stun._message(stun.BINDING_REQUEST, txid,
                          msg[20:] + stun._attr(stun.ATTR_SOFTWARE, b"x"), fingerprint=False)
    with pytest.raises(stun.MalformedAttributeError):
        stun.parse_binding_request(moved)


def test_no_mapped_address() -> None:
    msg = stun._message(stun.BINDING_SUCCESS, bytes(12), b"", fingerprint=True)
    with pytest.raises(stun.NoMappedAddressError):
        stun.parse_binding_response(msg)


def test_bad_address_family() -> None:
    value = bytes([0, 9, 0, 1]) + bytes(4)
    msg = stun._message(stun.BINDING_SUCCESS, bytes(12),
                        stun._attr(stun.ATTR_XOR_MAPPED_ADDRESS, value), fingerprint=False)
    with pytest.raises(stun.MalformedAttributeError):
        stun.parse_binding_response(msg)


def test_oversized_message_refused() -> None:
    attrs = stun._attr(stun.ATTR_SOFTWARE, bytes(stun.MAX_MESSAGE_LEN))
    msg = stun._message(stun.BINDING_REQUEST, bytes(12), attrs, fingerprint=False)
    with pytest.raises(stun.MalformedMessageError):
        stun.parse_binding_request(msg)


def test_too_many_attributes_refused() -> None:
    attrs = stun._attr(stun.ATTR_SOFTWARE, b"") * (stun.MAX_ATTRIBUTES + 1)
    msg = stun._message(stun.BINDING_REQUEST, bytes(12), attrs, fingerprint=False)
    with pytest.raises(stun.MalformedAttributeError):
        stun.parse_binding_request(msg)


@pytest.mark.parametrize("vector", [RFC_REQUEST, RFC_RESPONSE_V4, RFC_RESPONSE_V6])
def test_every_truncation_is_refused(vector: bytes) -> None:
    parse = stun.parse_binding_request if vector is RFC_REQUEST else stun.parse_binding_response
    for cut in range(len(vector)):
        with pytest.raises(stun.StunError):
            parse(vector[:cut])


@pytest.mark.parametrize("vector", [RFC_REQUEST, RFC_RESPONSE_V4, RFC_RESPONSE_V6])
@pytest.mark.parametrize("trailer", [b"\x00", b"\x00\x00\x00\x00", b"\x80\x28\x00\x04abcd"])
def test_trailing_bytes_are_refused(vector: bytes, trailer: bytes) -> None:
    # A datagram is one message: bytes past the length field are an error, not ignored.
    parse = stun.parse_binding_request if vector is RFC_REQUEST else stun.parse_binding_response
    with pytest.raises(stun.MalformedMessageError):
        parse(vector + trailer)


def test_errors_are_parse_errors() -> None:
    for cls in (stun.NotStunError, stun.BadFingerprintError, stun.MalformedAttributeError,
                stun.MalformedMessageError, stun.UnexpectedMessageError, stun.NoMappedAddressError):
        assert issubclass(cls, ParseError)


addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
)


@given(txid=st.binary(min_size=12, max_size=12), ip=addresses, port=st.integers(0, 65535),
       fingerprint=st.booleans(), software=st.none() | st.text(max_size=40))
def test_response_round_trip(txid: bytes, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                             port: int, fingerprint: bool, software: str | None) -> None:
    mapped = AddrPort(ip, port)
    msg = stun.marshal_binding_response(txid, mapped, fingerprint=fingerprint, software=software)
    assert stun.is_stun(msg)
    assert stun.parse_binding_response(msg) == (txid, mapped)


@given(txid=st.binary(min_size=12, max_size=12), fingerprint=st.booleans())
def test_request_round_trip(txid: bytes, fingerprint: bool) -> None:
    assert stun.parse_binding_request(stun.marshal_binding_request(txid, fingerprint)) == txid


def _stunlike() -> st.SearchStrategy[bytes]:
    """Random bytes that often get past the header check, so the attribute walk is fuzzed."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        body = draw(st.binary(max_size=300))
        msg_type = draw(st.sampled_from([0x0001, 0x0101, 0x0111, draw(st.integers(0, 0x3FFF))]))
        length = draw(st.sampled_from([len(body), len(body) & ~3, draw(st.integers(0, 0xFFFF))]))
        txid = draw(st.binary(min_size=12, max_size=12))
        return msg_type.to_bytes(2, "big") + length.to_bytes(2, "big") + stun._COOKIE_BYTES + txid + body

    return build()


@settings(max_examples=1500)
@given(data=st.one_of(st.binary(max_size=200), _stunlike()))
def test_fuzz_parsers_raise_only_stun_errors(data: bytes) -> None:
    stun.is_stun(data)
    for parse in (stun.parse_binding_response, stun.parse_binding_request):
        try:
            parse(data)
        except stun.StunError:
            pass


@settings(max_examples=300)
@given(txid=st.binary(min_size=12, max_size=12), ip=addresses, port=st.integers(0, 65535),
       flip=st.integers(min_value=0))
def test_fuzz_bit_flips(txid: bytes, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                        port: int, flip: int) -> None:
    msg = bytearray(stun.marshal_binding_response(txid, AddrPort(ip, port)))
    # Flip any bit except in the FINGERPRINT attribute's own type/length: renaming that
    # attribute turns it into an unknown optional one, which is legal without a fingerprint.
    protected = len(msg) - 8
    bits = [b for b in range(len(msg) * 8) if not protected <= b // 8 < protected + 4]
    bit = bits[flip % len(bits)]
    msg[bit // 8] ^= 1 << (bit % 8)
    # Any other single-bit change is caught by FINGERPRINT or the structure checks.
    with pytest.raises(stun.StunError):
        stun.parse_binding_response(bytes(msg))
