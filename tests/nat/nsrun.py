"""Scenarios run inside a test namespace (`ip netns exec NS python nsrun.py NAME JSON`).

Each prints one JSON line with what it observed; the test asserts on it. Run as a
separate process so its sockets belong to the namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time
from typing import Any

from meshctl.keys import DiscoPrivate, NodePublic
from meshctl.nat import disco, stun
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.rawsock import SharedPortSocket

IDLE_S = 0.5
REPLY_TIMEOUT_S = 3.0


def _disco_packet() -> bytes:
    box = disco.DiscoBox(DiscoPrivate(bytes([1] * 32)), os.urandom)
    return box.seal(disco.Ping(bytes(12), NodePublic(bytes(32))), DiscoPrivate(bytes([2] * 32)).public())


def _kind(payload: bytes) -> str:
    if stun.is_stun(payload):
        return "stun"
    if disco.looks_like_disco(payload):
        return "disco"
    return "other"


def filter_loopback(args: dict[str, Any]) -> dict[str, Any]:
    """Raw receiver on a port a plain UDP socket owns; send a mix; see what passes."""
    port = int(args["port"])
    owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # stands in for WireGuard's socket
    owner.bind(("127.0.0.1", port))
    owner.setblocking(False)
    sent: list[str] = []
    with SharedPortSocket(port) as raw, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        mix = [
            ("stun", stun.marshal_binding_request(stun.new_txid(os.urandom)), port),
            ("other", b"\x04\x00\x00\x00" + os.urandom(60), port),  # WireGuard-like data
            ("disco", _disco_packet(), port),
            ("other", b"hello", port),
            ("stun-elsewhere", stun.marshal_binding_request(bytes(12)), port + 1),
            ("other", b"\x01\x00\x00\x00" + os.urandom(144), port),
        ]
        for _ in range(200):  # a burst of "WireGuard" traffic the filter must keep out
            mix.append(("other", b"\x04\x00\x00\x00" + os.urandom(100), port))
        for kind, payload, dport in mix:
            peer.sendto(payload, ("127.0.0.1", dport))
            sent.append(kind)
        got = []
        while (r := raw.recv_wait(IDLE_S)) is not None:
            got.append({"kind": _kind(r.payload), "src": str(r.src), "dst": str(r.dst), "ttl": r.ttl})
        # the owner socket still gets everything sent to the port (we only observe)
        owner_count = 0
        while True:
            try:
                owner.recv(65535)
                owner_count += 1
            except BlockingIOError:
                break
        # TTL is ours to set: a packet from the raw sender to our own port, TTL 3
        raw.send(_disco_packet(), AddrPort(ipaddress.IPv4Address("127.0.0.1"), port), ttl=3)
        ttl_seen = raw.recv_wait(REPLY_TIMEOUT_S)
        ipv6_sent = raw.send(b"x", AddrPort(ipaddress.IPv6Address("::1"), port))
        unroutable_sent = raw.send(b"x", AddrPort(ipaddress.IPv4Address("203.0.113.1"), port))
        return {"received": got, "owner_count": owner_count,
                "peer_port": peer.getsockname()[1],
                "ttl": ttl_seen.ttl if ttl_seen else None,
                "ipv6_sent": ipv6_sent, "unroutable_sent": unroutable_sent}


def stun_from_port(args: dict[str, Any]) -> dict[str, Any]:
    """Bind `port` with a plain socket, send STUN from it via the raw socket, read the reply."""
    port = int(args["port"])
    server = parse_addr_port(args["server"])
    owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    owner.bind((args.get("bind", "0.0.0.0"), port))
    with SharedPortSocket(port) as raw:
        txid = stun.new_txid(os.urandom)
        start = time.monotonic()
        raw.send(stun.marshal_binding_request(txid), server)
        deadline = start + REPLY_TIMEOUT_S
        while (r := raw.recv_wait(max(0.0, deadline - time.monotonic()))) is not None:
            if r.src == server and stun.is_stun(r.payload):
                got_txid, mapped = stun.parse_binding_response(r.payload)
                if got_txid == txid:
                    return {"mapped": str(mapped), "src": str(r.src), "dst": str(r.dst),
                            "rtt_ms": (time.monotonic() - start) * 1000}
        return {"mapped": None}


def stun_bad_checksum(args: dict[str, Any]) -> dict[str, Any]:
    """Negative control: the same STUN request with a corrupted UDP checksum gets no answer."""
    from meshctl.nat import packet
    from meshctl.nat.rawsock import route_source

    port = int(args["port"])
    server = parse_addr_port(args["server"])
    owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    owner.bind(("0.0.0.0", port))
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with SharedPortSocket(port) as raw:
        txid = stun.new_txid(os.urandom)
        src = AddrPort(route_source(server), port)
        pkt = bytearray(packet.build_ipv4_udp(
            packet.UdpPacket(src, server, stun.marshal_binding_request(txid))))
        pkt[26] ^= 0x55  # UDP checksum high byte
        tx.sendto(bytes(pkt), (str(server.ip), 0))
        r = raw.recv_wait(REPLY_TIMEOUT_S)
        return {"answered": r is not None}


def netcheck_shared(args: dict[str, Any]) -> dict[str, Any]:
    """netcheck.from_shared_port from `port`, which a plain socket owns (like WireGuard)."""
    from meshctl.nat import netcheck

    port = int(args["port"])
    owner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    owner.bind(("0.0.0.0", port))
    with SharedPortSocket(port) as raw:
        return netcheck.from_shared_port(raw, args["servers"], timeout=3.0).to_json()


def admitted_loopback(args: dict[str, Any]) -> dict[str, Any]:
    """recv_admitted: a flood from one source and a few packets from another; only what the
    predicate admits is copied out (with recvmmsg, and with plain recv when `plain`); then the
    kernel filter narrowed to other disco keys and no STUN server lets nothing through."""
    from meshctl.nat.admission import key_of, source_key

    port = int(args["port"])
    with SharedPortSocket(port) as raw, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        if args["plain"]:
            raw._batch = None
        flooder.bind(("127.0.0.2", 0))
        peer.bind(("127.0.0.3", 0))
        flood_key = key_of(parse_addr_port(f"127.0.0.2:{flooder.getsockname()[1]}"))
        for _ in range(150):
            flooder.sendto(_disco_packet(), ("127.0.0.1", port))
        for _ in range(3):
            peer.sendto(_disco_packet(), ("127.0.0.1", port))
        time.sleep(0.2)
        admitted, refused = raw.recv_admitted(lambda view: source_key(view) != flood_key, 1000)
        sources = sorted({str(p.src) for p in (raw.parse(a) for a in admitted) if p})
        raw.set_filter([bytes([9] * 32)], [])
        flooder.sendto(_disco_packet(), ("127.0.0.1", port))
        flooder.sendto(stun.marshal_binding_request(bytes(12)), ("127.0.0.1", port))
        after = raw.recv_wait(IDLE_S)
        return {"admitted": len(admitted), "refused": refused, "sources": sources,
                "peer": f"127.0.0.3:{peer.getsockname()[1]}", "after_narrowing": after is not None}


SCENARIOS = {"netcheck_shared": netcheck_shared, "admitted_loopback": admitted_loopback,
             "filter_loopback": filter_loopback, "stun_from_port": stun_from_port,
             "stun_bad_checksum": stun_bad_checksum}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]))))
