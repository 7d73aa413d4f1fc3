"""Kernel WireGuard through a relay channel (inside the VM; see conftest.py).

The channel's bind must leave from the WireGuard port, which the kernel owns here: meshctl
sends it through its raw socket. Then each kernel WireGuard talks to the relay's channel port
as its peer's endpoint, and the relay forwards between the two ports.

    ns kA-xxxx                       ns kR-xxxx (meshctl relay)              ns kB-xxxx
    192.0.2.1  <----- veth ----->  192.0.2.254 | 198.51.100.254  <----- veth ----->  198.51.100.2
    wg 10.66.0.1 (kernel)            no forwarding: A and B reach only R     wg 10.66.0.2 (kernel)
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from kernel_harness import sh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "relay"))

from relay_support import RelayMesh, make_relay_mesh  # noqa: E402

from meshctl.keys import load_signing_key, write_private_key  # noqa: E402

pytestmark = pytest.mark.netns

RELAY_PORT: Final = 3340
WG_PORT: Final = 51820
START_S: Final = 240.0  # Python starting over the VM's 9p root under TCG is slow
SIDES: Final = {"alpha": ("192.0.2", "10.66.0.1"), "bravo": ("198.51.100", "10.66.0.2")}


def _wait(check: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def triangle(kernel_wireguard: None, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Namespaces for alpha, bravo and the relay; returns {name: namespace}."""
    suffix = secrets.token_hex(3)
    names = {"alpha": f"kA-{suffix}", "bravo": f"kB-{suffix}", "relay": f"kR-{suffix}"}
    made: list[str] = []
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, (member, (net, _)) in enumerate(SIDES.items()):
            near, far = f"vr{i}{suffix}", f"vm{i}{suffix}"
            sh("ip", "link", "add", near, "netns", names["relay"], "type", "veth", "peer", "name", far,
               "netns", names[member])
            sh("ip", "-n", names["relay"], "addr", "add", f"{net}.254/24", "dev", near)
            sh("ip", "-n", names[member], "addr", "add", f"{net}.{1 if member == 'alpha' else 2}/24", "dev", far)
            sh("ip", "-n", names["relay"], "link", "set", near, "up")
            sh("ip", "-n", names[member], "link", "set", far, "up")
        sh("ip", "netns", "exec", names["relay"], "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _popen(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_kernel_wireguard_pair_through_a_relay_channel(triangle: dict[str, str], tmp_path: Path) -> None:
    mesh: RelayMesh = make_relay_mesh(tmp_path / "coord", ("alpha", "bravo"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        relay_log = tmp_path / "relay.log"
        procs.append(_popen(triangle["relay"], [
            sys.executable, "-m", "meshctl", "relay", "--listen", f"0.0.0.0:{RELAY_PORT}", "--repo", str(mesh.path),
            "--root", mesh.fingerprint, "--state-dir", str(tmp_path / "relay-state"), "--name", "home"], relay_log))
        _wait(lambda: "relay home on" in relay_log.read_text(errors="replace"), "meshctl relay", START_S)
        relay_key = load_signing_key(tmp_path / "relay-state" / "relay.key").public().text()

        outs = {}
        for member, (net, mesh_ip) in SIDES.items():
            ns, keys = triangle[member], mesh.devices[member]
            keydir = tmp_path / f"keys-{member}"
            keydir.mkdir()
            write_private_key(keydir / "identity.key", keys.identity)
            write_private_key(keydir / "wireguard.key", keys.wireguard)
            ifname = f"wg{member[0]}{triangle['relay'][-6:]}"
            sh("ip", "-n", ns, "link", "add", ifname, "type", "wireguard")  # the kernel module
            sh("ip", "netns", "exec", ns, "wg", "set", ifname, "private-key", str(keydir / "wireguard.key"),
               "listen-port", str(WG_PORT))
            sh("ip", "-n", ns, "addr", "add", f"{mesh_ip}/24", "dev", ifname)
            sh("ip", "-n", ns, "link", "set", ifname, "up")
            outs[member] = (ns, ifname, tmp_path / f"{member}.json")
            other = "bravo" if member == "alpha" else "alpha"
            procs.append(_popen(ns, [
                sys.executable, "-m", "lab.relay_peer", "--relay", f"{net}.254:{RELAY_PORT}",
                "--network-id", mesh.network_id, "--relay-name", "home", "--relay-key", relay_key,
                "--identity-key", str(keydir / "identity.key"), "--wg-key", str(keydir / "wireguard.key"),
                "--wg-port", str(WG_PORT), "--peer", mesh.devices[other].wireguard.public().b64(),
                "--out", str(outs[member][2]), "--channels"], tmp_path / f"{member}.log"))

        def channel(member: str) -> str | None:
            try:
                doc = json.loads(outs[member][2].read_text())
            except (FileNotFoundError, ValueError):
                return None
            found = list(doc.get("channels", {}).values())
            return str(found[0]) if found else None

        _wait(lambda: channel("alpha") and channel("bravo"), "both channels READY", START_S)
        assert str(channel("alpha")).startswith("192.0.2.254:"), channel("alpha")
        assert str(channel("bravo")).startswith("198.51.100.254:"), channel("bravo")
        for member, other in (("alpha", "bravo"), ("bravo", "alpha")):
            ns, ifname, _ = outs[member]
            sh("ip", "netns", "exec", ns, "wg", "set", ifname, "peer", mesh.devices[other].wireguard.public().b64(),
               "allowed-ips", f"{SIDES[other][1]}/32", "endpoint", str(channel(member)))
        # alpha cannot reach bravo's address at all: only the relay's channel joins them
        assert sh("ip", "netns", "exec", outs["alpha"][0], "ping", "-c", "1", "-W", "1", "198.51.100.2",
                  check=False).returncode != 0
        ping = sh("ip", "netns", "exec", outs["alpha"][0], "ping", "-c", "3", "-W", "5", SIDES["bravo"][1],
                  check=False)
        assert ping.returncode == 0, (ping.stdout, relay_log.read_text(errors="replace")[-2000:])
        dump = sh("ip", "netns", "exec", outs["bravo"][0], "wg", "show", outs["bravo"][1], "endpoints").stdout
        assert dump.split()[1] == channel("bravo"), dump  # roaming kept the relay's port
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
