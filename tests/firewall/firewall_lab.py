"""Helpers for firewall tests: the sample policy's filters and a namespace pair with a veth.

ns "fwc-<id>" (client)                         ns "fws-<id>" (server)
veth "pc<id>"  100.64.0.2 (dev-laptop)    <->  veth "mesh<id>" 100.64.0.1/24 (prod; the "mesh interface")
               100.64.0.3 (ops-laptop)
               100.64.0.4 (monitor)
               100.64.0.9 (not a member)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "policy"))

from policy_samples import SAMPLE_PEERS, SAMPLE_POLICY, make_netmap, make_peer  # noqa: E402

from meshctl.coord.netmap import NetMap  # noqa: E402
from meshctl.policy.compile import PacketFilter, compile_filter  # noqa: E402
from meshctl.policy.parse import parse_policy  # noqa: E402

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
CLIENT_ADDRS = ("100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.9")


def sample_netmap(text: str | None = None) -> NetMap:
    return make_netmap([make_peer(*p) for p in SAMPLE_PEERS], text or SAMPLE_POLICY.read_text())


def sample_filter(node: str = "prod", text: str | None = None) -> PacketFilter:
    netmap = sample_netmap(text)
    return compile_filter(parse_policy(netmap.policy_text), netmap, node)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class NsPair:
    client: str
    server: str
    mesh_if: str

    def socket(self, ns: str, kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET) -> socket.socket:
        """A socket that lives in namespace `ns` (made on a thread moved there with setns)."""
        made: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
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

    def listen(self, port: int) -> socket.socket:
        srv = self.socket(self.server)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("100.64.0.1", port))
        srv.listen(8)
        srv.setblocking(False)
        return srv

    def connect(self, src: str, port: int, timeout: float = 1.0) -> socket.socket | None:
        """Connect from client address `src` to the server; None when no answer comes."""
        cli = self.socket(self.client)
        cli.bind((src, 0))
        cli.settimeout(timeout)
        try:
            cli.connect(("100.64.0.1", port))
        except (TimeoutError, ConnectionRefusedError):
            cli.close()
            return None
        return cli

    def recreate_mesh_interface(self) -> None:
        """Delete the server's end of the veth pair and make it again (a new device, same name)."""
        tag = self.mesh_if[4:]
        _sh("ip", "-n", self.server, "link", "del", self.mesh_if)
        _sh("ip", "link", "add", f"pc{tag}", "netns", self.client, "type", "veth", "peer", "name", self.mesh_if,
            "netns", self.server)
        _sh("ip", "-n", self.server, "addr", "add", "100.64.0.1/24", "dev", self.mesh_if)
        for addr in CLIENT_ADDRS:
            _sh("ip", "-n", self.client, "addr", "add", f"{addr}/24", "dev", f"pc{tag}")
        _sh("ip", "-n", self.client, "link", "set", f"pc{tag}", "up")
        _sh("ip", "-n", self.server, "link", "set", self.mesh_if, "up")

    def ping(self, src: str) -> bool:
        result = subprocess.run(
            ["ip", "netns", "exec", self.client, "ping", "-c", "1", "-W", "1", "-I", src, "100.64.0.1"],
            capture_output=True,
        )
        return result.returncode == 0


def queued(listener: socket.socket) -> int:
    """How many connections reached the listening socket (accepting them all)."""
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool in ("ip", "nft", "ping"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    return None
