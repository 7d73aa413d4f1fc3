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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

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


BPF_JA: Final = 0x05  # unconditional jump by k (32 bits: any distance)
BPF_MAX_JUMP: Final = 255  # conditional jumps (jt, jf) are one byte
# Sender keys checked in the kernel; a larger mesh checks only the magic there (the agent still
# refuses unknown keys before any cryptography). 4 instructions per 1,000 keys on top.
MAX_FILTER_DISCO_KEYS: Final = 2000
MAX_FILTER_STUN_SOURCES: Final = 32
_KEY_BLOCK: Final = 200  # compares per block, each block with its own nearby ACCEPT


@dataclass(frozen=True, slots=True)
class _Jump:
    """A conditional jump to labels (None: the next instruction), resolved by _assemble."""

    code: int
    k: int
    jt: str | None
    jf: str | None


@dataclass(frozen=True, slots=True)
class _Goto:
    label: str


Asm: TypeAlias = "BpfInsn | _Jump | _Goto | str"  # a str is a label: it takes no room


def _assemble(items: list[Asm]) -> tuple[BpfInsn, ...]:
    """Resolve labels; ValueError if a conditional jump would need more than a byte."""
    where: dict[str, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, str):
            where[item] = pc
        else:
            pc += 1
    out: list[BpfInsn] = []
    for item in items:
        if isinstance(item, str):
            continue
        nxt = len(out) + 1
        if isinstance(item, _Goto):
            out.append(BpfInsn(BPF_JA, 0, 0, where[item.label] - nxt))
        elif isinstance(item, _Jump):
            jt, jf = (0 if lab is None else where[lab] - nxt for lab in (item.jt, item.jf))
            if not (0 <= jt <= BPF_MAX_JUMP and 0 <= jf <= BPF_MAX_JUMP):
                raise ValueError("BPF jump out of range")
            out.append(BpfInsn(item.code, jt, jf, item.k))
        else:
            out.append(item)
    return tuple(out)


def shared_port_filter(port: int, disco_magic: bytes = DISCO_MAGIC, *,
                       disco_senders: Sequence[bytes] | None = None,
                       stun_sources: Sequence[AddrPort] | None = None) -> tuple[BpfInsn, ...]:
    """The program for a raw IPv4 UDP socket (input starts at the IP header).

    Accept only unfragmented UDP to `port` whose payload is STUN (two leading zero bits and
    the magic cookie at offset 4) or disco (the 6-byte magic); drop the rest, so WireGuard's
    own traffic never wakes the agent. The kernel can refuse more, at no cost to anyone:
    `disco_senders` (the verified map's disco keys): disco only from those (the first 4 bytes
    of the sender key compared; more than MAX_FILTER_DISCO_KEYS: not checked here);
    `stun_sources`: STUN only from those addresses (the STUN servers the agent asks).
    """
    if not 0 < port <= 0xFFFF:
        raise ValueError("port must be 1..65535")
    if len(disco_magic) != 6:
        raise ValueError("disco magic must be 6 bytes")
    accept, drop = BpfInsn(BPF_RET_K, 0, 0, BPF_ACCEPT_LEN), BpfInsn(BPF_RET_K, 0, 0, 0)
    prog: list[Asm] = [
        BpfInsn(BPF_LD_B_ABS, 0, 0, 9),  # A = ip protocol
        _Jump(BPF_JEQ_K, IPPROTO_UDP, None, "drop"),
        BpfInsn(BPF_LD_H_ABS, 0, 0, 6),  # A = flags + fragment offset
        _Jump(BPF_JSET_K, 0x1FFF, "drop", None),  # a later fragment has no UDP header
        BpfInsn(BPF_LDX_B_MSH, 0, 0, 0),  # X = IP header length
        BpfInsn(BPF_LD_H_IND, 0, 0, 2),  # A = UDP destination port
        _Jump(BPF_JEQ_K, port, None, "drop"),
        BpfInsn(BPF_LD_B_IND, 0, 0, 8),  # A = first payload byte
        _Jump(BPF_JSET_K, 0xC0, "disco", None),  # top bits set: not STUN
        BpfInsn(BPF_LD_W_IND, 0, 0, 12),  # A = payload[4:8]
        _Jump(BPF_JEQ_K, MAGIC_COOKIE, "stun", "disco"),
        "disco",
        BpfInsn(BPF_LD_W_IND, 0, 0, 8),  # A = payload[0:4]
        _Jump(BPF_JEQ_K, int.from_bytes(disco_magic[:4], "big"), None, "drop"),
        BpfInsn(BPF_LD_H_IND, 0, 0, 12),  # A = payload[4:6]
        _Jump(BPF_JEQ_K, int.from_bytes(disco_magic[4:], "big"), "senders", "drop"),
        "drop",
        drop,
        "stun",
    ]
    if stun_sources is None or len(stun_sources) > MAX_FILTER_STUN_SOURCES:
        prog.append(accept)
    else:
        for i, src in enumerate(s for s in stun_sources if s.ip.version == 4):
            prog += [BpfInsn(BPF_LD_W_ABS, 0, 0, 12),  # A = IP source
                     _Jump(BPF_JEQ_K, int(src.ip), None, f"stun-{i}"),
                     BpfInsn(BPF_LD_H_IND, 0, 0, 0),  # A = UDP source port
                     _Jump(BPF_JEQ_K, src.port, "stun-ok", None),
                     f"stun-{i}"]
        prog += [drop, "stun-ok", accept]
    prog.append("senders")
    keys = sorted({int.from_bytes(k[:4], "big") for k in disco_senders or ()})
    if disco_senders is None or len(disco_senders) > MAX_FILTER_DISCO_KEYS:
        prog.append(accept)
    else:
        prog.append(BpfInsn(BPF_LD_W_IND, 0, 0, 8 + len(disco_magic)))  # A = the sender key's first 4 bytes
        for b, first in enumerate(range(0, len(keys), _KEY_BLOCK)):
            prog += [_Jump(BPF_JEQ_K, k, f"key-ok-{b}", None) for k in keys[first : first + _KEY_BLOCK]]
            prog += [_Goto(f"key-next-{b}"), f"key-ok-{b}", accept, f"key-next-{b}"]
        prog.append(drop)
    return _assemble(prog)


def pack_filter(prog: tuple[BpfInsn, ...]) -> bytes:
    """The `struct sock_filter[]` array in native byte order (what SO_ATTACH_FILTER points to)."""
    if not 0 < len(prog) <= BPF_MAX_INSNS:
        raise ValueError("BPF program length out of range")
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in prog)
