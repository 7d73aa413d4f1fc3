"""A relay lab in network namespaces: a relay on the "internet", two devices running
wireguard-go configured by hand (`wg set`), each with the relay peer tool as its data path.

Used by the end-to-end test and by bench/relay_*.py (root; ip, nft, wireguard-go, wg).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from relay_support import RelayMesh

from lab import Lab, Node
from lab.core import lab_unavailable, meshctl_argv, poll
from meshctl.identity import DeviceKeys
from meshctl.keys import write_private_key

RELAY_PORT: Final = 3340
WG_PORT: Final = 51820
TUNNEL_NET: Final = "10.99.0"
READY_S: Final = 20.0


def netns_missing() -> str | None:
    reason = lab_unavailable()
    if reason:
        return reason
    for tool in ("wireguard-go", "wg", "ping"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` on PATH (Debian: wireguard-go, wireguard-tools, iputils-ping)"
    return None


@dataclass
class Device:
    node: Node
    name: str
    keys: DeviceKeys
    index: int  # tunnel address TUNNEL_NET.<index>
    ifname: str = ""
    tool: object = None  # the peer tool's Popen
    wg_proc: object = None  # wireguard-go's Popen (`ip netns exec` execs it: same pid)
    out: Path = Path()

    @property
    def tunnel_ip(self) -> str:
        return f"{TUNNEL_NET}.{self.index}"


class RelayLab:
    def __init__(self, lab: Lab, mesh: RelayMesh) -> None:
        self.lab = lab
        self.mesh = mesh
        self.relay_node: Node | None = None
        self.relay_proc: object = None
        self.relay_state = lab.tempdir("relay-state")

    # -- relay -----------------------------------------------------------------------------

    @property
    def relay_addr(self) -> str:
        assert self.relay_node is not None
        return f"{self.relay_node.ipv4}:{RELAY_PORT}"

    def start_relay(self, *extra: str) -> float:
        """Start `meshctl relay` in the relay namespace; return the monotonic time it was ready."""
        assert self.relay_node is not None
        argv = [*meshctl_argv(), "relay", "--listen", f"0.0.0.0:{RELAY_PORT}", "--repo", str(self.mesh.path),
                "--root", self.mesh.fingerprint, "--state-dir", str(self.relay_state), "--name", "home",
                "--metrics", f"127.0.0.1:{RELAY_PORT + 1}", *extra]
        proc = self.lab.popen(self.relay_node, argv)
        self.relay_proc = proc
        poll(lambda: "relay home on" in self.lab.log_of(proc) or proc.poll() is not None, "meshctl relay", READY_S)
        if proc.poll() is not None:
            raise RuntimeError(f"meshctl relay exited: {self.lab.log_of(proc)}")
        return time.monotonic()

    def kill_relay(self) -> None:
        self.lab.kill(self.relay_proc)  # type: ignore[arg-type]

    def metrics(self) -> str:
        assert self.relay_node is not None
        return self.lab.run(self.relay_node, ["python3", "-c", (
            "import urllib.request;print(urllib.request.urlopen("
            f"'http://127.0.0.1:{RELAY_PORT + 1}/metrics',timeout=5).read().decode())")]).stdout

    # -- devices ---------------------------------------------------------------------------

    def device(self, node: Node, name: str, index: int) -> Device:
        dev = Device(node, name, self.mesh.devices[name], index)
        keydir = self.lab.tempdir(f"keys-{name}")
        write_private_key(keydir / "identity.key", dev.keys.identity)
        write_private_key(keydir / "wireguard.key", dev.keys.wireguard)
        dev.ifname = self.lab.ifname(f"wg{name[:2]}")
        # -f: foreground, so the lab tracks and kills it (the daemonised form would outlive us).
        dev.wg_proc = self.lab.popen(node, ["wireguard-go", "-f", dev.ifname])
        poll(lambda: self.lab.run(node, ["wg", "show", dev.ifname], check=False).returncode == 0,
             f"wireguard-go {dev.ifname}", READY_S)
        self.lab.run(node, ["wg", "set", dev.ifname, "private-key", str(keydir / "wireguard.key"),
                            "listen-port", str(WG_PORT)])
        self.lab.run(node, ["ip", "addr", "add", f"{dev.tunnel_ip}/24", "dev", dev.ifname])
        self.lab.run(node, ["ip", "link", "set", dev.ifname, "up"])
        return dev

    def enlarge_wireguard_buffers(self, dev: Device) -> int:
        from meshctl.udp.sockets import enlarge_process_udp_buffers

        return enlarge_process_udp_buffers(dev.wg_proc.pid, WG_PORT)  # type: ignore[attr-defined]

    def start_tool(self, dev: Device, peers: list[Device], *extra: str) -> None:
        keydir = self.lab.tempdir(f"keys-{dev.name}")
        dev.out = self.lab.tempdir(f"tool-{dev.name}") / "endpoints.json"
        dev.out.unlink(missing_ok=True)
        assert self.relay_node is not None
        relay_key = (self.relay_state / "relay.key")
        argv = [sys.executable, "-m", "lab.relay_peer", "--relay", self.relay_addr,
                "--network-id", self.mesh.network_id, "--relay-name", "home",
                "--identity-key", str(keydir / "identity.key"), "--wg-key", str(keydir / "wireguard.key"),
                "--wg-port", str(WG_PORT), "--out", str(dev.out), *extra]
        if relay_key.exists():
            from meshctl.keys import load_signing_key

            argv += ["--relay-key", load_signing_key(relay_key).public().text()]
        for p in peers:
            argv += ["--peer", p.keys.wireguard.public().b64()]
        dev.tool = self.lab.popen(dev.node, argv)
        poll(lambda: self.tool_state(dev).get("connected") is True, f"relay peer tool on {dev.name}", READY_S)

    def tool_state(self, dev: Device) -> dict[str, object]:
        try:
            doc = json.loads(dev.out.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        assert isinstance(doc, dict)
        return doc

    def endpoint(self, dev: Device, peer: Device) -> str:
        eps = self.tool_state(dev)["endpoints"]
        assert isinstance(eps, dict)
        return str(eps[peer.keys.wireguard.public().b64()])

    def channel(self, dev: Device, peer: Device) -> str | None:
        """The READY channel endpoint the peer tool (started with --channels) reports, if any."""
        channels = self.tool_state(dev).get("channels") or {}
        assert isinstance(channels, dict)
        found = channels.get(peer.keys.wireguard.public().b64())
        return str(found) if found else None

    def wg_peer(self, dev: Device, peer: Device, endpoint: str, keepalive: int = 0) -> None:
        argv = ["wg", "set", dev.ifname, "peer", peer.keys.wireguard.public().b64(),
                "allowed-ips", f"{peer.tunnel_ip}/32", "endpoint", endpoint]
        if keepalive:
            argv += ["persistent-keepalive", str(keepalive)]
        self.lab.run(dev.node, argv)

    def ping_ok(self, src: Device, dst: Device, timeout_s: int = 1) -> bool:
        proc = self.lab.run(src.node, ["ping", "-c", "1", "-W", str(timeout_s), dst.tunnel_ip], check=False)
        return proc.returncode == 0
