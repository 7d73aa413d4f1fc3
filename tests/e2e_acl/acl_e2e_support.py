"""Helpers for the ACL end-to-end tests: sockets inside lab namespaces, a counting TCP echo
service, a SYN counter, and the policies of issue 6's scenario.

Sockets are made on a short-lived thread that joins the namespace with setns(2); the socket
stays in that namespace for its whole life and is used from the test's own thread.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Final

CLONE_NEWNET: Final = 0x40000000
CONNECT_TIMEOUT_S: Final = 1.5  # a WireGuard handshake on the lab LAN takes milliseconds
IO_TIMEOUT_S: Final = 5.0
SERVICE_PORTS: Final = (22, 443)
SYN_TABLE: Final = "acltest"  # the test's own nft table, beside meshctl's
_libc = ctypes.CDLL(None, use_errno=True)

POLICY_HEAD: Final = """// issue 6: a tagged production server, developers and operators.
{
	"groups": {
		"group:dev": ["dana@example.com"],
		"group:ops": ["oscar@example.com"],
	},
	"tagOwners": {"tag:prod": ["group:ops"]},
"""

# Developers reach production on 443 only; operators on every port.
POLICY_V1: Final = POLICY_HEAD + """	"acls": [
		{"action": "accept", "src": ["group:dev"], "dst": ["tag:prod:443"]},
		{"action": "accept", "src": ["group:ops"], "dst": ["tag:prod:*"]},
	],
	"tests": [
		{"src": "dana@example.com", "accept": ["tag:prod:443"], "deny": ["tag:prod:22"]},
		{"src": "oscar@example.com", "accept": ["tag:prod:22", "tag:prod:443"]},
	],
}
"""

# The change under test: developers get ssh too.
POLICY_V2: Final = POLICY_HEAD + """	"acls": [
		{"action": "accept", "src": ["group:dev"], "dst": ["tag:prod:22,443"]},
		{"action": "accept", "src": ["group:ops"], "dst": ["tag:prod:*"]},
	],
	"tests": [
		{"src": "dana@example.com", "accept": ["tag:prod:22", "tag:prod:443"]},
		{"src": "oscar@example.com", "accept": ["tag:prod:22", "tag:prod:443"]},
	],
}
"""

# An edit that breaks tests[1]: the operators' rule is gone.
POLICY_BROKEN: Final = POLICY_HEAD + """	"acls": [
		{"action": "accept", "src": ["group:dev"], "dst": ["tag:prod:22,443"]},
	],
	"tests": [
		{"src": "dana@example.com", "accept": ["tag:prod:22", "tag:prod:443"]},
		{"src": "oscar@example.com", "accept": ["tag:prod:22", "tag:prod:443"]},
	],
}
"""

# Operators lose ssh: a new connection the policy now forbids must not be accepted.
POLICY_V3: Final = POLICY_HEAD + """	"acls": [
		{"action": "accept", "src": ["group:dev"], "dst": ["tag:prod:22,443"]},
		{"action": "accept", "src": ["group:ops"], "dst": ["tag:prod:443"]},
	],
	"tests": [
		{"src": "dana@example.com", "accept": ["tag:prod:22", "tag:prod:443"]},
		{"src": "oscar@example.com", "accept": ["tag:prod:443"], "deny": ["tag:prod:22"]},
	],
}
"""


def family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def ns_socket(ns: str, family: socket.AddressFamily, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A socket living in network namespace `ns`."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller
            made.append(exc)

    # The thread ends inside the namespace and is discarded; its socket stays there.
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


class ConnectRefused(AssertionError):
    """The SYN reached the node and nothing listened: the filter was not what stopped it."""


def connect(ns: str, ip: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket | None:
    """A TCP connection from namespace `ns` to ip:port, or None when the SYN went unanswered."""
    sock = ns_socket(ns, family_of(ip))
    sock.settimeout(timeout_s)
    try:
        sock.connect((ip, port))
    except TimeoutError:
        sock.close()
        return None
    except ConnectionRefusedError:
        sock.close()
        raise ConnectRefused(f"{ip}:{port} refused the connection") from None
    sock.settimeout(IO_TIMEOUT_S)
    return sock


def exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` to the echo service and read the same number of bytes back."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(len(data) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def listeners(ns: str, ports: Sequence[int]) -> list[tuple[socket.socket, int]]:
    """Non-blocking TCP listeners on every port, IPv4 and IPv6, in namespace `ns`."""
    out = []
    for port in ports:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            srv = ns_socket(ns, family)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            srv.bind((host, port))
            srv.listen(64)
            srv.setblocking(False)
            out.append((srv, port))
    return out


class EchoService:
    """TCP echo on every port of `ports`, IPv4 and IPv6, in namespace `ns`; counts accepts."""

    def __init__(self, ns: str, ports: Sequence[int] = SERVICE_PORTS) -> None:
        self.accepts: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._listeners: list[socket.socket] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        for srv, port in listeners(ns, ports):
            self._listeners.append(srv)
            self._sel.register(srv, selectors.EVENT_READ, ("listen", port))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def accepted(self, port: int) -> int:
        with self._lock:
            return self.accepts[port]

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    return
                kind, port = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if kind == "listen":
                    try:
                        conn, addr = sock.accept()
                    except BlockingIOError:
                        continue
                    with self._lock:
                        self.accepts[port] += 1
                    self.serve(conn, addr[0], port)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""  # reset by the client: forget the connection
                if data:
                    sock.setblocking(True)
                    sock.sendall(data)
                    sock.setblocking(False)
                else:
                    self._sel.unregister(sock)
                    sock.close()

    def serve(self, conn: socket.socket, peer: str, port: int) -> None:
        """A new connection from address `peer`: echo what it sends (subclasses answer otherwise)."""
        conn.setblocking(False)
        self._sel.register(conn, selectors.EVENT_READ, ("conn", port))

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(IO_TIMEOUT_S)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        self._wake_w.close()


def install_syn_counter(ns: str, ifname: str, port: int) -> None:
    """Count TCP SYNs to `port` arriving on `ifname`, before any filter (its ingress hook, ahead of
    meshctl's chain there)."""
    script = f"""table netdev {SYN_TABLE} {{
	counter syn{port} {{ }}
	chain pre {{
		type filter hook ingress device "{ifname}" priority -500; policy accept;
		tcp dport {port} tcp flags & (syn | ack) == syn counter name "syn{port}"
	}}
}}
"""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True,
                   capture_output=True)


def syn_count(ns: str, port: int) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counter", "netdev", SYN_TABLE, f"syn{port}"],
                         text=True, check=True, capture_output=True).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"no counter syn{port} in table netdev {SYN_TABLE}")
