"""Helpers for the NAT-traversal tests: a real coturn, and throwaway namespaces with a NAT.

Everything started here is killed by PID and every namespace is deleted, even on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT_S = 10.0
NSRUN = Path(__file__).with_name("nsrun.py")
REPO = Path(__file__).resolve().parents[2]


def need_root_and_tools(*tools: str) -> None:
    """Skip with a message naming exactly what is missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root (raw sockets / network namespaces)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` on PATH")


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def ns_cmd(ns: str | None, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd] if ns else cmd


def _udp_listening(ns: str | None, ip: str, port: int) -> bool:
    out = run(ns_cmd(ns, ["ss", "-Hlun", f"sport = :{port}"]), check=False).stdout
    return f"{ip}:{port}" in out


@dataclass
class Coturn:
    ip: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def addr(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass
class CoturnFactory:
    tmp: Path
    started: list[Coturn] = field(default_factory=list)

    def start(self, ip: str = "127.0.0.1", port: int | None = None, ns: str | None = None) -> Coturn:
        """Start a STUN-only coturn (no auth, no TLS, no CLI) and wait until it listens."""
        port = port or free_udp_port()
        name = f"coturn-{len(self.started)}"
        conf = self.tmp / f"{name}.conf"
        log = self.tmp / f"{name}.log"
        conf.write_text(
            "\n".join([
                f"listening-ip={ip}", f"listening-port={port}", "stun-only", "no-auth",
                "no-tcp", "no-tls", "no-dtls", "no-cli", "no-rfc5780",
                f"pidfile={self.tmp / (name + '.pid')}", f"log-file={log}", "simple-log",
                "no-software-attribute",
            ]) + "\n"
        )
        # `ip netns exec` execs, so the PID we hold is turnserver's own.
        proc = subprocess.Popen(ns_cmd(ns, ["turnserver", "-c", str(conf)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        coturn = Coturn(ip, port, proc, log)
        self.started.append(coturn)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _udp_listening(ns, ip, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coturn did not start on {ip}:{port}: "
                                   f"{log.read_text() if log.exists() else 'no log'}")
            time.sleep(0.05)
        return coturn

    def stop_all(self) -> None:
        for c in self.started:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                try:
                    c.proc.wait(5)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()


# --- namespaces ----------------------------------------------------------------------------


@dataclass
class Namespaces:
    """Namespaces created by one test; deleted in reverse order."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    names: list[str] = field(default_factory=list)

    def add(self, role: str) -> str:
        name = f"mcnat-{role}-{self.suffix}"
        run(["ip", "netns", "add", name])
        self.names.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            run(["ip", "netns", "del", name], check=False)
        self.names.clear()


@dataclass(frozen=True)
class NatLab:
    """
    client (192.168.77.2) --veth-- (192.168.77.1) router (198.18.0.1) --veth-- (198.18.0.2) inet
    The router masquerades traffic leaving towards inet; coturn runs in inet.
    """

    client: str
    router: str
    inet: str
    client_ip: str = "192.168.77.2"
    router_inside_ip: str = "192.168.77.1"
    router_public_ip: str = "198.18.0.1"
    inet_ip: str = "198.18.0.2"


def build_nat_lab(ns: Namespaces, nat_rule: str = "masquerade") -> NatLab:
    lab = NatLab(ns.add("cli"), ns.add("rtr"), ns.add("inet"))
    s = ns.suffix
    # veth names are per-namespace once moved, but creation happens in the root namespace.
    a, b, c, d = f"mcA{s}", f"mcB{s}", f"mcC{s}", f"mcD{s}"
    run(["ip", "link", "add", a, "netns", lab.client, "type", "veth", "peer", b, "netns", lab.router])
    run(["ip", "link", "add", c, "netns", lab.router, "type", "veth", "peer", d, "netns", lab.inet])
    for nsname, dev, addr in ((lab.client, a, f"{lab.client_ip}/24"),
                              (lab.router, b, f"{lab.router_inside_ip}/24"),
                              (lab.router, c, f"{lab.router_public_ip}/24"),
                              (lab.inet, d, f"{lab.inet_ip}/24")):
        run(["ip", "-n", nsname, "addr", "add", addr, "dev", dev])
        run(["ip", "-n", nsname, "link", "set", dev, "up"])
    run(["ip", "-n", lab.client, "route", "add", "default", "via", lab.router_inside_ip])
    run(["ip", "netns", "exec", lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    script = (
        "table ip mcnat {\n"
        " chain post { type nat hook postrouting priority srcnat; policy accept;\n"
        f"  oifname \"{c}\" {nat_rule}\n }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", lab.router, "nft", "-f", "-"], input=script,
                   text=True, check=True, capture_output=True)
    return lab


def nsrun(ns: str | None, scenario: str, **args: Any) -> dict[str, Any]:
    """Run one scenario of tests/nat/nsrun.py (inside `ns`) and return its JSON result."""
    cmd = ns_cmd(ns, [sys.executable, str(NSRUN), scenario, json.dumps(args)])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"nsrun {scenario} failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


NsRun = Callable[..., dict[str, Any]]
