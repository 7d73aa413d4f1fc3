"""IPv4/UDP packets and the classic BPF filter for the shared WireGuard port (pure).

rawsock.py sends hand-built IPv4+UDP packets (so the source port can be
WireGuard's) and receives through a raw socket whose BPF program keeps only the
packets meshctl wants. Everything that decides bytes lives here, so it is unit-tested
without root; rawsock.py only moves the bytes.

Why a correct UDP checksum: the kernel does not compute it for raw sockets, and a
NAT that sees a bad checksum skips translation and leaks the private source address
(measured in the lab). RFC 768 allows 0 ("no checksum") for IPv4; we compute it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from meshctl.errors import ParseError
from meshctl.nat.addr import AddrPort
from meshctl.nat.disco import MAGIC as DISCO_MAGIC
from meshctl.nat.stun import MAGIC_COOKIE

IPV4_HEADER_LEN: Final = 20
UDP_HEADER_LEN: Final = 8
IPPROTO_UDP: Final = 17
DEFAULT_TTL: Final = 64
# Largest payload we build: one unfragmented packet on a 1500-byte link.
MAX_UDP_PAYLOAD: Final = 1500 - IPV4_HEADER_LEN - UDP_HEADER_LEN


class PacketError(ParseError):
    """A received IPv4/UDP packet is truncated, not UDP, a fragment, or inconsistent."""


@dataclass(frozen=True, slots=True)
class UdpPacket:
    src: AddrPort
    dst: AddrPort
    payload: bytes
    ttl: int = DEFAULT_TTL


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """RFC 1071 checksum."""
    return ~_ones_complement_sum(data) & 0xFFFF


def udp_checksum(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, udp: bytes) -> int:
    """The UDP checksum over the IPv4 pseudo-header and `udp` (header with checksum 0 + data).

    A computed 0 is sent as 0xFFFF: 0 on the wire means "no checksum" (RFC 768).
    """
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, IPPROTO_UDP, len(udp))
    csum = internet_checksum(pseudo + udp)
    return csum or 0xFFFF


def build_ipv4_udp(pkt: UdpPacket, ident: int = 0) -> bytes:
    """A whole IPv4 packet (header + UDP) ready for an IP_HDRINCL socket."""
    src_ip, dst_ip = pkt.src.ip, pkt.dst.ip
    if not isinstance(src_ip, ipaddress.IPv4Address) or not isinstance(dst_ip, ipaddress.IPv4Address):
        raise ValueError("raw UDP sending is IPv4 only")
    if len(pkt.payload) > MAX_UDP_PAYLOAD:
        raise ValueError(f"UDP payload larger than {MAX_UDP_PAYLOAD} bytes")
    if not 1 <= pkt.ttl <= 255:
        raise ValueError("TTL must be 1..255")
    udp_len = UDP_HEADER_LEN + len(pkt.payload)
    udp = struct.pack("!HHHH", pkt.src.port, pkt.dst.port, udp_len, 0) + pkt.payload
    csum = udp_checksum(src_ip, dst_ip, udp)
    udp = udp[:6] + csum.to_bytes(2, "big") + udp[8:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, IPV4_HEADER_LEN + udp_len, ident & 0xFFFF, 0,
        pkt.ttl, IPPROTO_UDP, 0, src_ip.packed, dst_ip.packed,
    )
    header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
    return header + udp


def parse_ipv4_udp(data: bytes) -> UdpPacket:
    """Parse what a raw IPv4 socket delivers: IP header (with options) + UDP."""
    if len(data) < IPV4_HEADER_LEN:
        raise PacketError("shorter than an IPv4 header")
    if data[0] >> 4 != 4:
        raise PacketError("not IPv4")
    ihl = (data[0] & 0x0F) * 4
    total_len, frag, ttl, proto = struct.unpack_from("!H2xHBB", data, 2)
    if ihl < IPV4_HEADER_LEN or total_len < ihl + UDP_HEADER_LEN or total_len > len(data):
        raise PacketError("inconsistent IPv4 lengths")
    if proto != IPPROTO_UDP:
        raise PacketError("not UDP")
    if frag & 0x3FFF:  # more-fragments flag or an offset: not a whole datagram
        raise PacketError("IPv4 fragment")
    src = ipaddress.IPv4Address(bytes(data[12:16]))
    dst = ipaddress.IPv4Address(bytes(data[16:20]))
    sport, dport, udp_len = struct.unpack_from("!HHH", data, ihl)
    if udp_len < UDP_HEADER_LEN or ihl + udp_len > total_len:
        raise PacketError("inconsistent UDP length")
    payload = bytes(data[ihl + UDP_HEADER_LEN : ihl + udp_len])
    return UdpPacket(AddrPort(src, sport), AddrPort(dst, dport), payload, ttl)


# --- classic BPF ---------------------------------------------------------------------------

# Opcodes (linux/filter.h, linux/bpf_common.h).
BPF_LD_W_ABS: Final = 0x20
BPF_LD_H_ABS: Final = 0x28
BPF_LD_B_ABS: Final = 0x30
BPF_LD_W_IND: Final = 0x40
BPF_LD_H_IND: Final = 0x48
BPF_LD_B_IND: Final = 0x50
BPF_LDX_B_MSH: Final = 0xB1
BPF_JEQ_K: Final = 0x15
BPF_JSET_K: Final = 0x45
BPF_RET_K: Final = 0x06
BPF_ACCEPT_LEN: Final = 0x40000  # "whole packet"
BPF_MAX_INSNS: Final = 4096  # BPF_MAXINSNS


@dataclass(frozen=True, slots=True)
class BpfInsn:
    """One `struct sock_filter`: jt/jf are offsets from the next instruction."""

    code: int
    jt: int
    jf: int
    k: int


def shared_port_filter(port: int, disco_magic: bytes = DISCO_MAGIC) -> tuple[BpfInsn, ...]:
    """The program for a raw IPv4 UDP socket (input starts at the IP header).

    Accept only unfragmented UDP to `port` whose payload is STUN (two leading zero
    bits and the magic cookie at offset 4) or disco (the 6-byte magic); drop the
    rest, so WireGuard's own traffic never wakes the agent.
    """
    if not 0 < port <= 0xFFFF:
        raise ValueError("port must be 1..65535")
    if len(disco_magic) != 6:
        raise ValueError("disco magic must be 6 bytes")
    m_word = int.from_bytes(disco_magic[:4], "big")
    m_half = int.from_bytes(disco_magic[4:], "big")
    # Layout (index: instruction), ACCEPT = 15, DROP = 16; offsets are relative to i + 1.
    prog = (
        BpfInsn(BPF_LD_B_ABS, 0, 0, 9),  # 0: A = ip protocol
        BpfInsn(BPF_JEQ_K, 0, 14, IPPROTO_UDP),  # 1: UDP? else DROP
        BpfInsn(BPF_LD_H_ABS, 0, 0, 6),  # 2: A = flags + fragment offset
        BpfInsn(BPF_JSET_K, 12, 0, 0x1FFF),  # 3: a later fragment has no UDP header: DROP
        BpfInsn(BPF_LDX_B_MSH, 0, 0, 0),  # 4: X = IP header length
        BpfInsn(BPF_LD_H_IND, 0, 0, 2),  # 5: A = UDP destination port
        BpfInsn(BPF_JEQ_K, 0, 9, port),  # 6: our port? else DROP
        BpfInsn(BPF_LD_B_IND, 0, 0, 8),  # 7: A = first payload byte
        BpfInsn(BPF_JSET_K, 2, 0, 0xC0),  # 8: top bits set: not STUN, try disco (11)
        BpfInsn(BPF_LD_W_IND, 0, 0, 12),  # 9: A = payload[4:8]
        BpfInsn(BPF_JEQ_K, 4, 0, MAGIC_COOKIE),  # 10: STUN cookie: ACCEPT
        BpfInsn(BPF_LD_W_IND, 0, 0, 8),  # 11: A = payload[0:4]
        BpfInsn(BPF_JEQ_K, 0, 3, m_word),  # 12: disco magic head? else DROP
        BpfInsn(BPF_LD_H_IND, 0, 0, 12),  # 13: A = payload[4:6]
        BpfInsn(BPF_JEQ_K, 0, 1, m_half),  # 14: disco magic tail? ACCEPT else DROP
        BpfInsn(BPF_RET_K, 0, 0, BPF_ACCEPT_LEN),  # 15: ACCEPT
        BpfInsn(BPF_RET_K, 0, 0, 0),  # 16: DROP
    )
    return prog


def pack_filter(prog: tuple[BpfInsn, ...]) -> bytes:
    """The `struct sock_filter[]` array in native byte order (what SO_ATTACH_FILTER points to)."""
    if not 0 < len(prog) <= BPF_MAX_INSNS:
        raise ValueError("BPF program length out of range")
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in prog)
