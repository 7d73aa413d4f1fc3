"""Pure IPv4/UDP building and parsing, checksums, and the BPF program (run in an interpreter)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.keys import DiscoPrivate, NodePublic
from meshctl.nat import disco, packet, stun
from meshctl.nat.addr import AddrPort, parse_addr_port

SRC = parse_addr_port("192.168.77.2:51820")
DST = parse_addr_port("198.18.0.2:3478")


def test_ipv4_header_checksum_known_vector() -> None:
    # The classic worked example (checksum field zeroed): expected 0xb861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert packet.internet_checksum(header) == 0xB861


def test_udp_checksum_known_vector() -> None:
    # Computed by hand: 10.0.0.1:1 -> 10.0.0.2:2, payload "ab"; pseudo-header + UDP header words
    # 0a00+0001+0a00+0002+0011+000a + 0001+0002+000a+0000 + 6162 = 0x758d -> ~ = 0x8a72.
    udp = struct.pack("!HHHH", 1, 2, 10, 0) + b"ab"
    csum = packet.udp_checksum(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2"), udp)
    assert csum == 0x8A72


def test_build_layout_and_checksums_verify() -> None:
    payload = stun.marshal_binding_request(bytes(12))
    raw = packet.build_ipv4_udp(packet.UdpPacket(SRC, DST, payload, ttl=2), ident=0x1234)
    assert raw[0] == 0x45 and raw[8] == 2 and raw[9] == 17
    assert struct.unpack_from("!H", raw, 2)[0] == len(raw) == 20 + 8 + len(payload)
    assert packet.internet_checksum(raw[:20]) == 0  # header checksum verifies
    udp = raw[20:]
    pseudo = SRC.ip.packed + DST.ip.packed + struct.pack("!BBH", 0, 17, len(udp))
    assert packet.internet_checksum(pseudo + udp) == 0  # UDP checksum verifies
    assert struct.unpack_from("!HH", udp, 0) == (51820, 3478)


def test_zero_checksum_is_sent_as_ffff() -> None:
    # Find a payload whose checksum would compute as 0: solve for the last word.
    src, dst = ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2")
    base = struct.pack("!HHHH", 1, 2, 10, 0) + b"\x00\x00"
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, 10)
    partial = packet._ones_complement_sum(pseudo + base)
    fill = (0xFFFF - partial) & 0xFFFF
    udp = base[:8] + fill.to_bytes(2, "big")
    assert packet.udp_checksum(src, dst, udp) == 0xFFFF


def test_parse_round_trip() -> None:
    pkt = packet.UdpPacket(SRC, DST, b"hello", ttl=7)
    assert packet.parse_ipv4_udp(packet.build_ipv4_udp(pkt)) == pkt


def test_parse_with_ip_options_and_trailing_bytes() -> None:
    raw = bytearray(packet.build_ipv4_udp(packet.UdpPacket(SRC, DST, b"xyz")))
    with_opts = bytearray([0x46]) + raw[1:20] + b"\x01\x01\x01\x00" + raw[20:]
    struct.pack_into("!H", with_opts, 2, len(with_opts))
    parsed = packet.parse_ipv4_udp(bytes(with_opts) + b"ethernet padding")
    assert parsed.payload == b"xyz" and parsed.dst == DST


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:10],
        lambda b: b"\x60" + b[1:],  # IPv6 version nibble
        lambda b: b[:9] + b"\x06" + b[10:],  # TCP
        lambda b: b[:6] + b"\x20\x00" + b[8:],  # more fragments
        lambda b: b[:6] + b"\x00\x10" + b[8:],  # fragment offset
        lambda b: b[:2] + b"\x00\xff" + b[4:],  # total length past end
        lambda b: b[:24] + b"\x00\x04" + b[26:],  # UDP length < 8
    ],
)
def test_parse_errors(mutate: object) -> None:
    raw = packet.build_ipv4_udp(packet.UdpPacket(SRC, DST, b"payload"))
    with pytest.raises(packet.PacketError):
        packet.parse_ipv4_udp(mutate(raw))  # type: ignore[operator]


def test_build_refuses_bad_input() -> None:
    v6 = AddrPort(ipaddress.IPv6Address("::1"), 1)
    for bad in (packet.UdpPacket(v6, DST, b""), packet.UdpPacket(SRC, DST, b"", ttl=0),
                packet.UdpPacket(SRC, DST, bytes(packet.MAX_UDP_PAYLOAD + 1))):
        with pytest.raises(ValueError):
            packet.build_ipv4_udp(bad)


@settings(max_examples=1000)
@given(data=st.binary(max_size=200))
def test_fuzz_parse(data: bytes) -> None:
    try:
        packet.parse_ipv4_udp(data)
    except packet.PacketError:
        pass


@given(payload=st.binary(max_size=300), sport=st.integers(1, 65535), dport=st.integers(1, 65535),
       src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1), ttl=st.integers(1, 255))
def test_build_parse_property(payload: bytes, sport: int, dport: int, src: int, dst: int,
                              ttl: int) -> None:
    pkt = packet.UdpPacket(AddrPort(ipaddress.IPv4Address(src), sport),
                           AddrPort(ipaddress.IPv4Address(dst), dport), payload, ttl)
    raw = packet.build_ipv4_udp(pkt)
    assert packet.parse_ipv4_udp(raw) == pkt
    udp = raw[20:]
    pseudo = raw[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert packet.internet_checksum(pseudo + udp) == 0


# --- BPF: a small classic-BPF interpreter, enough for the opcodes the builder uses --------


LOADS = {  # opcode -> (size, indexed by X)
    packet.BPF_LD_W_ABS: (4, False), packet.BPF_LD_H_ABS: (2, False),
    packet.BPF_LD_B_ABS: (1, False), packet.BPF_LD_W_IND: (4, True),
    packet.BPF_LD_H_IND: (2, True), packet.BPF_LD_B_IND: (1, True),
}


class _OutOfBounds(Exception):
    pass


def run_bpf(prog: tuple[packet.BpfInsn, ...], data: bytes) -> int:
    """Interpret `prog` like the kernel: an out-of-bounds load returns 0 (drop)."""

    def load(off: int, size: int) -> int:
        if off < 0 or off + size > len(data):
            raise _OutOfBounds
        return int.from_bytes(data[off : off + size], "big")

    a = x = 0
    pc = 0
    steps = 0
    try:
        while True:
            steps += 1
            assert steps <= len(prog), "classic BPF only jumps forward"
            assert 0 <= pc < len(prog), "jumped out of the program"
            ins = prog[pc]
            pc += 1
            code, k = ins.code, ins.k
            if code in LOADS:
                size, indexed = LOADS[code]
                a = load(k + (x if indexed else 0), size)
            elif code == packet.BPF_LDX_B_MSH:
                x = (load(k, 1) & 0x0F) * 4
            elif code == packet.BPF_JA:
                pc += k
            elif code == packet.BPF_JEQ_K:
                pc += ins.jt if a == k else ins.jf
            elif code == packet.BPF_JSET_K:
                pc += ins.jt if a & k else ins.jf
            elif code == packet.BPF_RET_K:
                return k
            else:
                raise AssertionError(f"opcode {code:#x} not interpreted")
    except _OutOfBounds:
        return 0


PORT = 41641


def _ip(payload: bytes, dport: int = PORT) -> bytes:
    return packet.build_ipv4_udp(packet.UdpPacket(DST, AddrPort(SRC.ip, dport), payload))


def _disco_packet() -> bytes:
    a, b = DiscoPrivate(bytes([1] * 32)), DiscoPrivate(bytes([2] * 32))
    box = disco.DiscoBox(a, lambda n: bytes(n))
    return box.seal(disco.Ping(bytes(12), NodePublic(bytes(32))), b.public())


def test_bpf_accepts_stun_and_disco_to_our_port() -> None:
    prog = packet.shared_port_filter(PORT)
    assert run_bpf(prog, _ip(stun.marshal_binding_response(bytes(12), DST))) == packet.BPF_ACCEPT_LEN
    assert run_bpf(prog, _ip(stun.marshal_binding_request(bytes(12)))) == packet.BPF_ACCEPT_LEN
    assert run_bpf(prog, _ip(_disco_packet())) == packet.BPF_ACCEPT_LEN


@pytest.mark.parametrize(
    "raw",
    [
        _ip(stun.marshal_binding_request(bytes(12)), dport=PORT + 1),  # other port
        _ip(_disco_packet(), dport=51820),
        _ip(b"\x04\x00\x00\x00" + bytes(28)),  # WireGuard transport data
        _ip(b"\x01\x00\x00\x00" + bytes(144)),  # WireGuard handshake initiation
        _ip(b"\x40" + stun.marshal_binding_request(bytes(12))[1:]),  # cookie but top bits set
        _ip(disco.MAGIC[:5] + b"X" + bytes(60)),  # almost disco
        _ip(b""),  # empty payload: loads past the end
        _ip(b"MC"),  # short
    ],
)
def test_bpf_drops_everything_else(raw: bytes) -> None:
    assert run_bpf(packet.shared_port_filter(PORT), raw) == 0


def test_bpf_drops_non_udp_and_fragments() -> None:
    raw = bytearray(_ip(stun.marshal_binding_request(bytes(12))))
    tcp = bytes(raw[:9]) + b"\x06" + bytes(raw[10:])
    frag = bytes(raw[:6]) + b"\x00\x05" + bytes(raw[8:])
    prog = packet.shared_port_filter(PORT)
    assert run_bpf(prog, tcp) == 0
    assert run_bpf(prog, frag) == 0


def test_bpf_honours_ip_options() -> None:
    raw = _ip(stun.marshal_binding_request(bytes(12)))
    with_opts = bytearray([0x46]) + raw[1:20] + b"\x01\x01\x01\x00" + raw[20:]
    assert run_bpf(packet.shared_port_filter(PORT), bytes(with_opts)) == packet.BPF_ACCEPT_LEN


KEY_A, KEY_B = bytes([1] * 32), bytes([2] * 32)  # _disco_packet's sender is DiscoPrivate([1] * 32).public()


def _filters() -> list[tuple[packet.BpfInsn, ...]]:
    many = [i.to_bytes(4, "big") + bytes(28) for i in range(packet.MAX_FILTER_DISCO_KEYS)]
    return [packet.shared_port_filter(PORT),
            packet.shared_port_filter(PORT, disco_senders=many, stun_sources=[DST] * packet.MAX_FILTER_STUN_SOURCES)]


@pytest.mark.parametrize("prog", _filters(), ids=["plain", "largest"])
def test_bpf_jumps_stay_in_program(prog: tuple[packet.BpfInsn, ...]) -> None:
    assert len(prog) <= packet.BPF_MAX_INSNS
    for i, ins in enumerate(prog):
        if ins.code in (packet.BPF_JEQ_K, packet.BPF_JSET_K):
            assert i + 1 + max(ins.jt, ins.jf) < len(prog)
        if ins.code == packet.BPF_JA:
            assert 0 <= i + 1 + ins.k < len(prog)
    assert prog[-1].code == packet.BPF_RET_K


def test_pack_filter() -> None:
    prog = packet.shared_port_filter(PORT)
    packed = packet.pack_filter(prog)
    assert len(packed) == 8 * len(prog)
    code, jt, jf, k = struct.unpack_from("=HBBI", packed, 8 * 6)
    assert (code, jt, k) == (packet.BPF_JEQ_K, 0, PORT)
    assert prog[6 + 1 + jf] == packet.BpfInsn(packet.BPF_RET_K, 0, 0, 0)
    with pytest.raises(ValueError):
        packet.shared_port_filter(0)


def _disco_from(sender: bytes) -> bytes:
    return disco.MAGIC + sender + bytes(12 + 16 + 46)


def test_bpf_disco_only_from_the_maps_keys() -> None:
    """The kernel drops disco naming a key outside the verified map: the agent never wakes for it."""
    prog = packet.shared_port_filter(PORT, disco_senders=[DiscoPrivate(KEY_A).public().raw, KEY_B])
    assert run_bpf(prog, _ip(_disco_packet())) == packet.BPF_ACCEPT_LEN
    assert run_bpf(prog, _ip(_disco_from(KEY_B))) == packet.BPF_ACCEPT_LEN
    assert run_bpf(prog, _ip(_disco_from(bytes([3] * 32)))) == 0
    assert run_bpf(packet.shared_port_filter(PORT, disco_senders=[]), _ip(_disco_from(KEY_B))) == 0
    # STUN is not the key list's business
    assert run_bpf(prog, _ip(stun.marshal_binding_response(bytes(12), DST))) == packet.BPF_ACCEPT_LEN


def test_bpf_disco_keys_of_a_large_mesh() -> None:
    keys = [(i * 7919).to_bytes(4, "big") + bytes(28) for i in range(packet.MAX_FILTER_DISCO_KEYS)]
    prog = packet.shared_port_filter(PORT, disco_senders=keys)
    for key in (keys[0], keys[199], keys[200], keys[1000], keys[-1]):
        assert run_bpf(prog, _ip(_disco_from(key))) == packet.BPF_ACCEPT_LEN
    assert run_bpf(prog, _ip(_disco_from((7919 * 3 + 1).to_bytes(4, "big") + bytes(28)))) == 0
    too_many = packet.shared_port_filter(PORT, disco_senders=[*keys, bytes(32)])
    assert run_bpf(too_many, _ip(_disco_from(bytes([9] * 32)))) == packet.BPF_ACCEPT_LEN  # checked by the agent


def test_bpf_stun_only_from_the_servers_asked() -> None:
    reply = stun.marshal_binding_response(bytes(12), DST)
    prog = packet.shared_port_filter(PORT, stun_sources=[parse_addr_port("203.0.113.9:3478"), DST])
    assert run_bpf(prog, _ip(reply)) == packet.BPF_ACCEPT_LEN  # _ip() sends from DST
    for other in ("203.0.113.9:3479", "198.18.0.3:3478", "198.18.0.2:3479"):
        forged = packet.build_ipv4_udp(packet.UdpPacket(parse_addr_port(other), AddrPort(SRC.ip, PORT), reply))
        assert run_bpf(prog, forged) == 0, other
    assert run_bpf(packet.shared_port_filter(PORT, stun_sources=[]), _ip(reply)) == 0
    assert run_bpf(prog, _ip(_disco_packet())) == packet.BPF_ACCEPT_LEN  # disco is not the list's business


@settings(max_examples=500)
@given(payload=st.binary(max_size=80), dport=st.sampled_from([PORT, PORT + 1]),
       restricted=st.booleans(), sender=st.sampled_from([KEY_A, KEY_B, bytes([7] * 32)]))
def test_bpf_agrees_with_python_demux(payload: bytes, dport: int, restricted: bool, sender: bytes) -> None:
    if payload[:1] == b"M":  # often a disco packet from one of three senders
        payload = disco.MAGIC + sender + payload
    # is_stun needs 20 bytes; the filter only looks at the first 8: compare on that basis.
    looks_stun = len(payload) >= 8 and payload[0] & 0xC0 == 0 and payload[4:8] == stun._COOKIE_BYTES
    looks_disco = disco.looks_like_disco(payload) and (not restricted or payload[6:10] in (KEY_A[:4], KEY_B[:4]))
    if restricted:
        looks_stun = False  # the one STUN server listed is SRC; _ip() sends from DST
    want = dport == PORT and (looks_stun or looks_disco)
    prog = (packet.shared_port_filter(PORT, disco_senders=[KEY_A, KEY_B], stun_sources=[SRC]) if restricted
            else packet.shared_port_filter(PORT))
    got = run_bpf(prog, _ip(payload, dport))
    assert (got != 0) == want
