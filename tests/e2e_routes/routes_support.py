"""Helpers for the routes end-to-end tests and benchmarks: a TCP service that answers with the
address it sees (so a test knows which router's SNAT carried it), a leak counter on a physical
interface, and small readers of a node's routing state.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e_acl"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from acl_e2e_support import EchoService, family_of, ns_socket  # noqa: E402

from lab import Lab, Node  # noqa: E402

CONNECT_TIMEOUT_S: Final = 1.5
LEAK_TABLE: Final = "leakwatch"


class WhoService(EchoService):
    """TCP on `ports` (IPv4 and IPv6) in namespace `ns`: each connection gets back the address it
    came from, one line, and is closed. Counts the connections per port."""

    def serve(self, conn: socket.socket, peer: str, port: int) -> None:
        try:
            conn.sendall(f"{peer}\n".encode())
        except OSError:
            pass
        conn.close()


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
