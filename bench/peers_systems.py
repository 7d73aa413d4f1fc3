"""The three systems bench/peers.py compares, each behind the same small driver (lab shell).

    a -- nat-a (port-restricted) --+-- internet --+-- nat-b (port-restricted) -- b
                                   |  git daemon, coturn (meshctl's)
                                   +-- relay       `meshctl relay`
                                   +-- lighthouse  nebula, am_lighthouse + am_relay
                                   +-- hub         tincd, the node a and b ConnectTo

One lab holds all three, but only one system runs at a time, each on its own ports, interfaces
and server host: meshctl's WireGuard on 51820 (interface from the lab), Nebula on 4242, tinc on
655. Every daemon is started with `Lab.popen` or by `meshctl up`, so each runs in its own session.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import peers_config as cfg
import procstat

from lab import PORT_RESTRICTED, Lab, LabError, Node, TwoNats, poll
from lab.scenario import MeshScenario, RelayBox, build_relay_mesh
from meshctl.udp.sockets import enlarge_process_udp_buffers
from meshctl.wg.userspace import find_wireguard_go

WG_PORT: Final = 51820
RELAY_NAME: Final = "r1"
# The relay syncs like a device (the CLI's default); it is restarted for each meshctl turn, and a
# restart syncs at once. Its per-client rate limit (1000 Mbit/s by default) is lifted, as in
# bench/relay_throughput.py: Nebula's and tinc's relays have none.
RELAY_SYNC_S: Final = 60.0
RELAY_RATE_MBIT: Final = "100000"
SERVER_READY_S: Final = 30.0
LAUNCH_EXIT_S: Final = 30.0


class PeerSystem(Protocol):
    """What the bench needs of each system."""

    name: str
    port: int  # the devices' UDP port (the one whose socket buffers must be equal)

    @property
    def server(self) -> Node: ...

    def start_server(self) -> None: ...
    def stop_server(self) -> None: ...
    def server_pids(self) -> list[int]: ...
    def launch(self, node: Node, *, relayed: bool) -> None: ...
    def launch_error(self, node: Node) -> str | None: ...
    def stop(self, node: Node) -> None: ...
    def tunnel_ip(self, node: Node) -> str: ...
    def tunnel_ifname(self, node: Node) -> str: ...
    def processes(self, node: Node) -> dict[str, list[int]]: ...
    def after_start(self, node: Node) -> None: ...
    def settled(self, node: Node, peer: Node, *, relayed: bool) -> bool: ...


@dataclass
class Topology:
    lab: Lab
    topo: TwoNats
    mesh: MeshScenario
    relay: RelayBox
    lighthouse: Node
    hub: Node

    @property
    def devices(self) -> tuple[Node, Node]:
        return self.topo.a, self.topo.b


def build_topology(lab: Lab) -> Topology:
    """Both devices behind port-restricted NATs, meshctl's mesh (a and b joined and approved, the
    relay listed), and the public hosts for Nebula's lighthouse and tinc's hub."""
    mesh, topo, relay = build_relay_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED, name="peersbench",
                                         relay_name=RELAY_NAME, relay_sync_interval_s=RELAY_SYNC_S)
    relay.stop()  # started per meshctl turn
    relay.argv += ["--rate-limit-mbit", RELAY_RATE_MBIT]
    return Topology(lab, topo, mesh, relay, lab.public_host("lighthouse"), lab.public_host("hub"))


def _listening(lab: Lab, node: Node, proto: str, port: int) -> bool:
    flag = "-Hlun" if proto == "udp" else "-Hltn"
    return lab.run(node, ["ss", flag, f"sport = :{port}"], check=False).stdout.strip() != ""


def socket_buffers(lab: Lab, node: Node, port: int) -> list[tuple[int, int]]:
    """(receive, send) buffer bytes of each UDP socket bound to `port` in `node`, as the kernel
    holds them (`ss -m`)."""
    out = lab.run(node, ["ss", "-Huamn", f"sport = :{port}"], check=False).stdout
    return procstat.skmem_buffers(out)


def link_mtu(lab: Lab, node: Node, ifname: str) -> int | None:
    proc = lab.run(node, ["ip", "-j", "link", "show", ifname], check=False)
    if proc.returncode != 0:
        return None
    return int(json.loads(proc.stdout)[0]["mtu"])


def wan_rx_bytes(lab: Lab, node: Node) -> int:
    """Bytes the node has received on its internet link (the relay's, lighthouse's, hub's load)."""
    link = json.loads(lab.run(node, ["ip", "-s", "-j", "link", "show", node.link("wan").ifname]).stdout)[0]
    return int(link["stats64"]["rx"]["bytes"])


# --- meshctl --------------------------------------------------------------------------------------


@dataclass
class Meshctl:
    net: Topology
    name: str = "meshctl"
    port: int = WG_PORT
    _launchers: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    @property
    def server(self) -> Node:
        return self.net.relay.node

    def _member(self, node: Node) -> str:
        return next(m.name for m in self.net.mesh.members.values() if m.node is node)

    def start_server(self) -> None:
        self.net.relay.start(SERVER_READY_S)

    def stop_server(self) -> None:
        self.net.relay.stop()

    def server_pids(self) -> list[int]:
        proc = self.net.relay.proc
        return procstat.descendants(proc.pid) if proc is not None and proc.poll() is None else []

    def launch(self, node: Node, *, relayed: bool) -> None:
        self._launchers[node.ns] = self.net.lab.meshctl_popen(node, ["up"])

    def launch_error(self, node: Node) -> str | None:
        proc = self._launchers.pop(node.ns, None)
        if proc is None:
            return None
        try:
            code = proc.wait(LAUNCH_EXIT_S)
        except subprocess.TimeoutExpired:
            return f"`meshctl up` on {node.name} did not return within {LAUNCH_EXIT_S:g} s"
        if code != 0:
            output = self.net.lab.log_of(proc)[-500:]
            return f"`meshctl up` on {node.name} exited {code}: {output}\n{self.agent_log(node)}"
        return None

    def agent_log(self, node: Node) -> str:
        path = Path(self.net.lab.meshctl_env(node)["MESHCTL_STATE_DIR"]) / "agent.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no agent.log)"

    def stop(self, node: Node) -> None:
        self.net.lab.meshctl(node, ["down"])

    def tunnel_ip(self, node: Node) -> str:
        return self.net.mesh.members[self._member(node)].mesh_ipv4

    def tunnel_ifname(self, node: Node) -> str:
        return self.net.lab.meshctl_env(node)["MESHCTL_INTERFACE"]

    def agent_pid(self, node: Node) -> int | None:
        path = Path(self.net.lab.meshctl_env(node)["MESHCTL_STATE_DIR"]) / "agent.pid"
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return None
        return pid if procstat.read_cpu(pid) is not None else None

    def processes(self, node: Node) -> dict[str, list[int]]:
        agent = self.agent_pid(node)
        wg = find_wireguard_go(self.tunnel_ifname(node))
        return {"agent": procstat.descendants(procstat.program_root(agent)) if agent else [],
                "wireguard-go": [wg] if wg else []}

    def after_start(self, node: Node) -> None:
        """Nothing: the agent sizes wireguard-go's sockets itself (16 MiB)."""

    def peer_status(self, node: Node) -> dict[str, object]:
        doc = json.loads(self.net.lab.meshctl(node, ["status", "--json"]).stdout)
        peers = [p for p in doc["peers"] if p["name"] in ("a", "b")]
        return dict(peers[0]) if peers else {}

    def settled(self, node: Node, peer: Node, *, relayed: bool) -> bool:
        """Relayed: WireGuard on the relay's channel port (not the agent's loopback proxy)."""
        if not relayed:
            return True  # judged by the bytes the relay host sees
        return bool(self.peer_status(node).get("relay_channel"))


# --- Nebula and tinc: one daemon per node, started by the bench ------------------------------------


@dataclass
class DaemonPerNode:
    """A system whose nodes each run one daemon the bench starts itself (`ip netns exec` execs it:
    the Popen's pid is the daemon's)."""

    net: Topology
    overlays: dict[str, cfg.Overlay] = field(default_factory=dict)  # by namespace
    _procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    name = ""
    port = 0
    process = ""  # the node's part in the RSS and CPU rows
    server_listens = "udp"  # what the server has open once it is ready

    @property
    def server(self) -> Node:
        raise NotImplementedError

    def argv(self, node: Node, *, relayed: bool) -> list[str]:
        raise NotImplementedError

    def _start(self, node: Node, *, relayed: bool) -> None:
        self._procs[node.ns] = self.net.lab.popen(node, self.argv(node, relayed=relayed))

    def start_server(self) -> None:
        self._start(self.server, relayed=True)
        proc = self._procs[self.server.ns]
        poll(lambda: proc.poll() is not None or _listening(self.net.lab, self.server, self.server_listens, self.port),
             f"{self.name} server", SERVER_READY_S)
        if proc.poll() is not None:
            raise LabError(f"{self.name} server exited {proc.returncode}: {self.net.lab.log_of(proc)[-1000:]}")
        self.after_start(self.server)

    def stop_server(self) -> None:
        self.stop(self.server)

    def server_pids(self) -> list[int]:
        return self.processes(self.server)[self.process]

    def launch(self, node: Node, *, relayed: bool) -> None:
        self._start(node, relayed=relayed)

    def launch_error(self, node: Node) -> str | None:
        proc = self._procs.get(node.ns)
        if proc is not None and proc.poll() is not None:
            return f"{self.process} on {node.name} exited {proc.returncode}: {self.net.lab.log_of(proc)[-1000:]}"
        return None

    def stop(self, node: Node) -> None:
        proc = self._procs.pop(node.ns, None)
        if proc is not None:
            self.net.lab.kill(proc)

    def tunnel_ip(self, node: Node) -> str:
        return self.overlays[node.ns].tunnel_ip

    def tunnel_ifname(self, node: Node) -> str:
        return self.overlays[node.ns].ifname

    def processes(self, node: Node) -> dict[str, list[int]]:
        proc = self._procs.get(node.ns)
        return {self.process: [proc.pid] if proc is not None and proc.poll() is None else []}

    def after_start(self, node: Node) -> None:
        """Nothing by default."""

    def settled(self, node: Node, peer: Node, *, relayed: bool) -> bool:
        return True


@dataclass
class Nebula(DaemonPerNode):
    name = "nebula"
    port = cfg.NEBULA_PORT
    process = "nebula"
    server_listens = "udp"
    pki: Path = Path()

    @property
    def server(self) -> Node:
        return self.net.lighthouse

    def setup(self) -> None:
        """A CA, a certificate per node (`nebula-cert`), a config per node and relay choice. The UDP
        buffers are in the config (listen.read_buffer / write_buffer, SO_RCVBUFFORCE)."""
        lab = self.net.lab
        self.pki = lab.tempdir("nebula")
        nodes = {"lighthouse": self.net.lighthouse, "a": self.net.devices[0], "b": self.net.devices[1]}
        for i, (name, node) in enumerate(nodes.items(), start=1):
            self.overlays[node.ns] = cfg.Overlay(name, cfg.overlay_ip(cfg.NEBULA_NET, i), lab.ifname("neb"))
        subprocess.run(["nebula-cert", "ca", "-name", "peersbench", "-out-crt", f"{self.pki}/ca.crt",
                        "-out-key", f"{self.pki}/ca.key"], check=True, capture_output=True)
        lighthouse = self.overlays[self.net.lighthouse.ns]
        for overlay in self.overlays.values():
            subprocess.run(["nebula-cert", *cfg.nebula_cert_sign_args(overlay, str(self.pki))], check=True,
                           capture_output=True)
            for use_relay in (False, True):
                config = cfg.nebula_config(overlay, pki_dir=str(self.pki), lighthouse=lighthouse,
                                           lighthouse_public=str(self.net.lighthouse.ipv4), use_relay=use_relay)
                self._config_path(overlay, use_relay).write_text(cfg.nebula_config_text(config))

    def _config_path(self, overlay: cfg.Overlay, use_relay: bool) -> Path:
        return self.pki / f"{overlay.name}{'-relayed' if use_relay else ''}.yml"

    def argv(self, node: Node, *, relayed: bool) -> list[str]:
        return ["nebula", "-config", str(self._config_path(self.overlays[node.ns], relayed))]


@dataclass
class Tinc(DaemonPerNode):
    name = "tinc"
    port = cfg.TINC_PORT
    process = "tincd"
    server_listens = "tcp"
    dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def server(self) -> Node:
        return self.net.hub

    def setup(self) -> None:
        """tinc.conf, tinc-up and hosts/NAME per node; RSA keys with `tincd -K`; every node gets
        every other node's host file (its public key and subnet)."""
        lab = self.net.lab
        nodes = {"hub": self.net.hub, "a": self.net.devices[0], "b": self.net.devices[1]}
        for i, (name, node) in enumerate(nodes.items(), start=1):
            overlay = cfg.Overlay(name, cfg.overlay_ip(cfg.TINC_NET, i), lab.ifname("tinc"))
            self.overlays[node.ns] = overlay
            conf_dir = self.dirs[node.ns] = lab.tempdir(f"tinc-{name}")
            (conf_dir / "hosts").mkdir(exist_ok=True)
            (conf_dir / "tinc.conf").write_text(cfg.tinc_conf(overlay, [] if node is self.net.hub else ["hub"]))
            public = str(node.ipv4) if node is self.net.hub else None
            (conf_dir / "hosts" / name).write_text(cfg.tinc_host(overlay, public))
            up = conf_dir / "tinc-up"
            up.write_text(cfg.tinc_up(overlay))
            up.chmod(0o755)
            subprocess.run(["tincd", "-c", str(conf_dir), "-K"], stdin=subprocess.DEVNULL, check=True,
                           capture_output=True, timeout=60)
        for ns, overlay in self.overlays.items():
            host_file = (self.dirs[ns] / "hosts" / overlay.name).read_text()
            for other in self.dirs:
                if other != ns:
                    (self.dirs[other] / "hosts" / overlay.name).write_text(host_file)

    def argv(self, node: Node, *, relayed: bool) -> list[str]:
        conf_dir = self.dirs[node.ns]
        return cfg.tincd_args(str(conf_dir), str(conf_dir / "tinc.pid"))

    def after_start(self, node: Node) -> None:
        """tinc 1.0 sizes its UDP socket with SO_RCVBUF, capped at net.core.rmem_max: size it from
        outside, as meshctl's agent does for wireguard-go."""
        for pid in self.processes(node)[self.process]:
            enlarge_process_udp_buffers(pid, self.port, cfg.SOCKET_BUFFER_BYTES)


def systems(net: Topology) -> tuple[Meshctl, Nebula, Tinc]:
    """The three, in the order of a round."""
    nebula, tinc = Nebula(net), Tinc(net)
    nebula.setup()
    tinc.setup()
    return Meshctl(net), nebula, tinc


def block_direct(lab: Lab, net: Topology) -> None:
    """Drop everything between the two NATs' public addresses at the internet router."""
    script = cfg.block_between_ruleset(str(net.topo.nat_a.public_ip), str(net.topo.nat_b.public_ip))
    lab.run(net.topo.internet, ["nft", "-f", "-"], input=script)


def unblock_direct(lab: Lab, net: Topology) -> None:
    lab.run(net.topo.internet, ["nft", "delete", "table", "ip", cfg.BLOCK_TABLE], check=False)


def ping_burst_share(lab: Lab, net: Topology, system: PeerSystem, count: int = 20,
                     size: int = cfg.TUNNEL_MTU - 28) -> float | None:
    """Bytes the system's server received per byte of a quick ping burst from a to b (0: direct,
    about 1: relayed), or None when the burst got no reply. Full-size packets: tinc sends what is
    larger than the path MTU it has found so far through the hub."""
    a, b = net.devices
    before = wan_rx_bytes(lab, system.server)
    proc = lab.run(a, ["ping", "-q", "-c", str(count), "-i", "0.01", "-s", str(size), "-W", "1",
                       system.tunnel_ip(b)], check=False)
    if proc.returncode != 0:
        return None
    return (wan_rx_bytes(lab, system.server) - before) / (2 * count * (size + 28))


def wait_settled(lab: Lab, net: Topology, system: PeerSystem, *, relayed: bool, timeout_s: float) -> float | None:
    """Wait until the path a -> b is the one the session is for: direct (a ping burst passes the
    server host by), or the system's relayed path. Seconds waited, or None on timeout."""
    a, b = net.devices
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if relayed:
            if system.settled(a, b, relayed=True) and system.settled(b, a, relayed=True):
                return time.monotonic() - start
        else:
            share = ping_burst_share(lab, net, system)
            if share is not None and share < 0.25:
                return time.monotonic() - start
        time.sleep(0.5)
    return None
