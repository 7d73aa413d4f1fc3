"""Helpers for the attack tests: a two-member LAN mesh and the LAN's git host as the attacker.

    node1, node2: members on LAN "lan", agents up, a direct path between them (WireGuard port 51820)
    attacker:     the LAN's git host, no member: its own address, and root in its namespace
Captures are made in node1's namespace (standing in for an on-path attacker, which sees what
node1 receives); replays are sent from the attacker's address.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lab import Lab
from lab.scenario import MeshScenario

WG_PORT: Final = 51820
FLOODER: Final = Path(__file__).with_name("flooder.py")
# Sealed disco sizes (6 magic + 32 key + 12 nonce + 16 tag + inner): a ping's inner message is
# 46 bytes, a pong's 32; no call-me-maybe (2 + 18 per endpoint) has either size.
PING_LEN: Final = 112
PONG_LEN: Final = 98

# Captures the first disco packet of `size` bytes from SRC:PORT to this namespace's port PORT
# (a raw socket sees a copy; nothing is taken from the agent), prints it in hex.
CAPTURE: Final = r"""
import socket, sys, time
src, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.settimeout(timeout)
end = time.monotonic() + timeout
while time.monotonic() < end:
    try:
        data = s.recv(4096)
    except TimeoutError:
        break
    ihl = (data[0] & 15) * 4
    sport, dport = int.from_bytes(data[ihl:ihl + 2], "big"), int.from_bytes(data[ihl + 2:ihl + 4], "big")
    payload = data[ihl + 8:]
    if socket.inet_ntoa(data[12:16]) == src and sport == port and dport == port and len(payload) == size \
            and payload.startswith(b"MC\xf0\x9f\x94\x8d"):
        print(payload.hex())
        break
"""

# Sends PAYLOAD (hex) COUNT times from one UDP socket to DST:PORT, then counts what comes back to
# that socket for LISTEN seconds; prints {"back": [lengths...]}.
REPLAY: Final = r"""
import json, socket, sys, time
dst, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
count, listen = int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
for _ in range(count):
    s.sendto(payload, (dst, port))
s.settimeout(0.2)
back = []
end = time.monotonic() + listen
while time.monotonic() < end:
    try:
        back.append(len(s.recv(4096)))
    except TimeoutError:
        pass
print(json.dumps({"back": back}))
"""


@dataclass
class AttackMesh:
    mesh: MeshScenario
    attacker: str  # the attacker's namespace

    @property
    def lab(self) -> Lab:
        return self.mesh.lab

    def ip(self, name: str) -> str:
        return str(self.mesh.members[name].node.ipv4)

    def status(self, name: str) -> dict[str, object]:
        return dict(json.loads(self.mesh.meshctl(name, "status", "--json").stdout))

    def peer(self, name: str, other: str) -> dict[str, object]:
        peers = self.status(name)["peers"]
        assert isinstance(peers, list)
        return dict(next(p for p in peers if p["name"] == other))

    def direct(self, name: str, other: str) -> bool:
        return self.peer(name, other)["path"] == "direct"

    def admission(self, name: str) -> dict[str, int]:
        me = self.status(name)["self"]
        assert isinstance(me, dict)
        return dict(me["nat"]["admission"])

    def wg_endpoint(self, name: str, other: str) -> str | None:
        """The endpoint node `name`'s WireGuard holds for `other`, read from the device."""
        node = self.mesh.members[name].node
        ifname = self.lab.meshctl_env(node)["MESHCTL_INTERFACE"]
        key = self.peer(name, other)["wg_public_key"]
        out = self.lab.run(node, ["wg", "show", ifname, "endpoints"]).stdout
        for line in out.splitlines():
            k, _, endpoint = line.partition("\t")
            if k == key:
                return endpoint if endpoint != "(none)" else None
        return None

    def attacker_ip(self) -> str:
        out = self.lab.run(self.attacker, ["ip", "-4", "-o", "addr", "show", "scope", "global"]).stdout
        return out.split()[3].split("/")[0]

    def disco_key_hex(self, name: str) -> str:
        record = json.loads((self.mesh.checkout / "peers" / f"{name}.json").read_text())
        return base64.b64decode(record["disco_key"]).hex()

    def capture(self, at: str, sender: str, size: int, timeout_s: float = 15.0) -> bytes:
        """A disco packet of `size` bytes that `sender`'s agent sent to `at`'s, as it arrived."""
        proc = self.lab.run(self.mesh.members[at].node, [sys.executable, "-S", "-c", CAPTURE, self.ip(sender),
                                                         str(WG_PORT), str(size), str(timeout_s)],
                            timeout=timeout_s + 10)
        assert proc.stdout.strip(), f"no disco packet of {size} bytes from {sender} within {timeout_s:g} s"
        return bytes.fromhex(proc.stdout.strip())

    def replay(self, to: str, payload: bytes, count: int = 1, listen_s: float = 5.0) -> list[int]:
        """Send `payload` from the attacker's address `count` times; the lengths of what came back."""
        proc = self.lab.run(self.attacker, [sys.executable, "-S", "-c", REPLAY, self.ip(to), str(WG_PORT),
                                            payload.hex(), str(count), str(listen_s)], timeout=listen_s + 30)
        return list(json.loads(proc.stdout)["back"])

    def flood(self, to: str, kind: str, rate: int, seconds: float) -> subprocess.Popen[str]:
        return self.lab.popen(self.attacker, [sys.executable, "-S", str(FLOODER), self.ip(to), str(WG_PORT), kind,
                                              str(rate), str(seconds), self.disco_key_hex("node2")],
                              stdout=subprocess.PIPE)

    def pings(self, src: str, dst: str, count: int, interval_s: float = 0.1) -> tuple[int, int]:
        """(sent, answered) pings from `src` to `dst`'s mesh address, one per interval."""
        out = self.lab.run(self.mesh.members[src].node,
                           ["ping", "-q", "-c", str(count), "-i", str(interval_s), "-W", "1",
                            self.mesh.members[dst].mesh_ipv4], check=False, timeout=count * interval_s + 30).stdout
        line = next(line for line in out.splitlines() if "packets transmitted" in line)
        return int(line.split()[0]), int(line.split(", ")[1].split()[0])


def wait_until(check: Callable[[], bool], what: str, timeout_s: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.25)
    return time.monotonic() - start
