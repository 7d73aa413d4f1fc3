"""Helpers for the routes end-to-end tests and benchmarks: a TCP service that answers with the
address it sees (so a test knows which router's SNAT carried it), a leak counter on a physical
interface, and small readers of a node's routing state.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e_acl"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from acl_e2e_support import family_of, ns_socket  # noqa: E402

from lab import Lab, Node  # noqa: E402

CONNECT_TIMEOUT_S: Final = 1.5
LEAK_TABLE: Final = "leakwatch"


class WhoService:
    """TCP on `ports` (IPv4 and IPv6) in namespace `ns`: each connection gets back the address it
    came from, one line, and is closed. Counts the connections per port."""

    def __init__(self, ns: str, ports: Sequence[int]) -> None:
        self.accepts: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        for port in ports:
            for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                srv = ns_socket(ns, family)
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                srv.bind((host, port))
                srv.listen(64)
                srv.setblocking(False)
                self._sel.register(srv, selectors.EVENT_READ, port)
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
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    conn, addr = sock.accept()
                except BlockingIOError:
                    continue
                with self._lock:
                    self.accepts[key.data] += 1
                try:
                    conn.sendall(f"{addr[0]}\n".encode())
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        self._wake_w.close()


def ask_who(ns: str, ip: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """The address `ip:port`'s WhoService saw this connection come from; None without an answer."""
    sock = ns_socket(ns, family_of(ip))
    sock.settimeout(timeout_s)
    try:
        sock.connect((ip, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                break
            data += chunk
        return data.decode().strip() or None
    except OSError:
        return None
    finally:
        sock.close()


def install_leak_counter(lab: Lab, node: Node, ifname: str, v4: str, v6: str) -> None:
    """Count packets leaving `ifname` (the physical interface) for the `v4`/`v6` prefixes."""
    script = f"""table inet {LEAK_TABLE} {{
	counter out4 {{ }}
	counter out6 {{ }}
	chain post {{
		type filter hook postrouting priority 500; policy accept;
		oifname "{ifname}" ip daddr {v4} counter name "out4"
		oifname "{ifname}" ip6 daddr {v6} counter name "out6"
	}}
}}
"""
    lab.run(node, ["nft", "delete", "table", "inet", LEAK_TABLE], check=False)
    lab.run(node, ["nft", "-f", "-"], input=script)


def leaked(lab: Lab, node: Node) -> int:
    total = 0
    for name in ("out4", "out6"):
        out = lab.run(node, ["nft", "-j", "list", "counter", "inet", LEAK_TABLE, name]).stdout
        total += next(int(i["counter"]["packets"]) for i in json.loads(out)["nftables"] if "counter" in i)
    return total


def table_routes(lab: Lab, node: Node) -> list[str]:
    """meshctl's routing table (109), both families, as `ip route` prints it."""
    out = []
    for family in ("-4", "-6"):
        proc = lab.run(node, ["ip", family, "route", "show", "table", "109"], check=False)
        out += [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return out


def ping(lab: Lab, node: Node, ip: str, count: int = 2, timeout_s: int = 2) -> bool:
    proc = lab.run(node, ["ping", "-c", str(count), "-i", "0.3", "-W", str(timeout_s), ip], check=False)
    return proc.returncode == 0


def wait_until(check: object, timeout_s: float, interval_s: float = 0.2) -> float | None:
    """Seconds until `check()` held, or None at the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(interval_s)
    return None
