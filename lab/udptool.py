"""A small UDP tool the lab runs inside namespaces, as a script: `python -S udptool.py ...`.

  echo  PORT [BIND]         answer every datagram with the sender's address as seen here
                            ("IP PORT"), which is how tests observe NAT mappings
  agent PORT [BIND]         one socket driven line by line over stdin/stdout:
                              send HOST PORT [HEX]     -> "ok" | "error MESSAGE"
                              recv SECONDS [MAX]       -> "from HOST PORT HEX"... then "end"
                              stun HOST PORT SECONDS   -> "mapped HOST PORT" | "timeout"
  stun  HOST PORT DEADLINE  repeat a binding request until answered; print
                            "mapped IP PORT [other IP PORT]"; exit 1 at the deadline

echo and agent print "ready" once their socket is bound.

Standard library only, and no import of the meshctl package, so it starts in a few tens of
milliseconds (tests start many of them). It also holds the lab's own few lines of STUN
(RFC 8489), so the lab does not depend on the product code it is used to test.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass

MAX_DATAGRAM = 65535
STUN_RETRY_S = 0.1
MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
HEADER_LEN = 20
TXID_LEN = 12
MAX_STUN_LEN = 1500  # one datagram; coturn's answers are about 100 bytes
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")

Backlog = deque[tuple[str, int, bytes]]


class StunParseError(ValueError):
    """Not a well-formed STUN binding success for our transaction."""


@dataclass(frozen=True, slots=True)
class StunReply:
    mapped: tuple[str, int]
    other: tuple[str, int] | None = None  # OTHER-ADDRESS (RFC 5780), when the server has two
    origin: tuple[str, int] | None = None  # RESPONSE-ORIGIN


def binding_request(txid: bytes) -> bytes:
    if len(txid) != TXID_LEN:
        raise ValueError("a STUN transaction id is 12 bytes")
    return _HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, txid)


def _address(value: bytes, xor_pad: bytes | None) -> tuple[str, int]:
    if len(value) < 4:
        raise StunParseError("address attribute too short")
    family, port, raw = value[1], int.from_bytes(value[2:4], "big"), value[4:]
    if (family, len(raw)) not in ((1, 4), (2, 16)):
        raise StunParseError(f"bad address family {family} / length {len(raw)}")
    if xor_pad is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_pad, strict=False))
    af = socket.AF_INET if family == 1 else socket.AF_INET6
    return socket.inet_ntop(af, raw), port


def parse_binding_response(data: bytes, txid: bytes) -> StunReply:
    """Parse a binding success response to the request with `txid`."""
    if not HEADER_LEN <= len(data) <= MAX_STUN_LEN:
        raise StunParseError(f"a STUN message is {HEADER_LEN}..{MAX_STUN_LEN} bytes")
    mtype, length, cookie, got_txid = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE:
        raise StunParseError("no STUN magic cookie")
    if mtype != BINDING_SUCCESS:
        raise StunParseError(f"not a binding success (type 0x{mtype:04x})")
    if got_txid != txid:
        raise StunParseError("transaction id does not match")
    if length % 4 or HEADER_LEN + length != len(data):
        raise StunParseError("message length does not match the datagram")
    xor_pad = data[4:HEADER_LEN]  # cookie + txid
    found: dict[int, tuple[str, int]] = {}
    pos = HEADER_LEN
    while pos < len(data):
        if pos + _ATTR.size > len(data):
            raise StunParseError("truncated attribute header")
        atype, alen = _ATTR.unpack_from(data, pos)
        value = data[pos + _ATTR.size : pos + _ATTR.size + alen]
        if len(value) != alen:
            raise StunParseError("truncated attribute")
        if atype == ATTR_XOR_MAPPED_ADDRESS:
            found.setdefault(atype, _address(value, xor_pad))
        elif atype in (ATTR_MAPPED_ADDRESS, ATTR_OTHER_ADDRESS, ATTR_RESPONSE_ORIGIN):
            found.setdefault(atype, _address(value, None))
        pos += _ATTR.size + (alen + 3) // 4 * 4
    mapped = found.get(ATTR_XOR_MAPPED_ADDRESS) or found.get(ATTR_MAPPED_ADDRESS)
    if mapped is None:
        raise StunParseError("no (XOR-)MAPPED-ADDRESS")
    return StunReply(mapped, found.get(ATTR_OTHER_ADDRESS), found.get(ATTR_RESPONSE_ORIGIN))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stun(sock: socket.socket, host: str, port: int, timeout: float,
          backlog: Backlog | None) -> StunReply | None:
    """Send binding requests every STUN_RETRY_S until one is answered or `timeout` passes.

    Other datagrams that arrive meanwhile go to `backlog` (the agent's later `recv`)."""
    txid = os.urandom(TXID_LEN)
    request = binding_request(txid)
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while (now := time.monotonic()) < deadline:
        if now >= next_send:
            try:
                sock.sendto(request, (host, port))
            except OSError:
                pass  # no route yet, or blocked: retry until the deadline
            next_send = now + STUN_RETRY_S
        sock.settimeout(max(0.001, min(next_send, deadline) - now))
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
        except (TimeoutError, ConnectionRefusedError):
            continue
        try:
            return parse_binding_response(data, txid)
        except StunParseError:
            if backlog is not None:
                backlog.append((addr[0], addr[1], data))
    return None


def run_echo(sock: socket.socket) -> None:
    _say("ready")
    while True:
        _data, addr = sock.recvfrom(MAX_DATAGRAM)
        sock.sendto(f"{addr[0]} {addr[1]}".encode(), addr)


def _recv(sock: socket.socket, backlog: Backlog, timeout: float, max_count: int) -> None:
    deadline = time.monotonic() + timeout
    while backlog and max_count > 0:
        host, port, data = backlog.popleft()
        _say(f"from {host} {port} {data.hex()}")
        max_count -= 1
    while max_count > 0 and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
        except TimeoutError:
            break
        _say(f"from {addr[0]} {addr[1]} {data.hex()}")
        max_count -= 1
    _say("end")


def run_agent(sock: socket.socket) -> None:
    backlog: Backlog = deque()
    _say("ready")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "send":
            payload = bytes.fromhex(words[3]) if len(words) > 3 else b""
            try:
                sock.sendto(payload, (words[1], int(words[2])))
            except OSError as err:  # e.g. EPERM from a firewall drop: a result, not a crash
                _say(f"error {err.strerror}")
            else:
                _say("ok")
        elif words[0] == "recv":
            _recv(sock, backlog, float(words[1]), int(words[2]) if len(words) > 2 else 1 << 30)
        elif words[0] == "stun":
            reply = _stun(sock, words[1], int(words[2]), float(words[3]), backlog)
            _say("timeout" if reply is None else f"mapped {reply.mapped[0]} {reply.mapped[1]}")
        else:
            _say(f"error unknown command {words[0]}")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] in ("echo", "agent"):
        bind = argv[2] if len(argv) > 2 else "0.0.0.0"
        sock = socket.socket(_family(bind), socket.SOCK_DGRAM)
        sock.bind((bind, int(argv[1])))
        (run_echo if argv[0] == "echo" else run_agent)(sock)
        return 0
    if len(argv) == 4 and argv[0] == "stun":
        host, port, deadline = argv[1], int(argv[2]), float(argv[3])
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        reply = _stun(sock, host, port, deadline, None)
        if reply is None:
            print(f"no STUN answer from {host}:{port} within {deadline} s", file=sys.stderr)
            return 1
        other = f" other {reply.other[0]} {reply.other[1]}" if reply.other else ""
        _say(f"mapped {reply.mapped[0]} {reply.mapped[1]}{other}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
