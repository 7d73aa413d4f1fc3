"""Helpers for the end-to-end tests and the data-plane benchmarks (root, network lab).

- `wg_dump`: what `wg show IF dump` says, parsed (the private key is dropped at once);
- `add_members`: many members at once, written with the coordination library (not the CLI);
- small accessors for a lab node's meshctl state directory, interface and agent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from lab import Lab, Node
from meshctl.coord import admin, records, verify
from meshctl.coord.join import make_request
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey, load_signing_key
from meshctl.wg.userspace import pid_alive  # re-exported for the e2e tests

POLL_S: Final = 0.05
# Fake members get addresses from this offset on, far from the ones `approve` hands out first.
FAKE_ADDRESS_OFFSET: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class WgPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: frozenset[str]
    latest_handshake: int | None
    rx_bytes: int
    tx_bytes: int
    keepalive: int | None


@dataclass(frozen=True, slots=True)
class WgDump:
    public_key: str
    listen_port: int
    peers: dict[str, WgPeer]


def parse_wg_dump(text: str) -> WgDump:
    """`wg show IF dump`: a line for the interface, then one per peer (tab separated)."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) != 4:
        raise ValueError("not the output of `wg show IF dump`")
    _private, public, port, _fwmark = lines[0]
    peers = {}
    for fields in lines[1:]:
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
        peers[key] = WgPeer(
            public_key=key,
            endpoint=None if endpoint == "(none)" else endpoint,
            allowed_ips=frozenset() if allowed == "(none)" else frozenset(allowed.split(",")),
            latest_handshake=int(handshake) or None,
            rx_bytes=int(rx),
            tx_bytes=int(tx),
            keepalive=None if keepalive == "off" else int(keepalive),
        )
    return WgDump(public, int(port), peers)


def wg_dump(lab: Lab, node: Node) -> WgDump:
    ifname = lab.meshctl_env(node)["MESHCTL_INTERFACE"]
    return parse_wg_dump(lab.run(node, ["wg", "show", ifname, "dump"]).stdout)


def state_dir(lab: Lab, node: Node) -> Path:
    return Path(lab.meshctl_env(node)["MESHCTL_STATE_DIR"])


def interface(lab: Lab, node: Node) -> str:
    return lab.meshctl_env(node)["MESHCTL_INTERFACE"]


def agent_pid(lab: Lab, node: Node) -> int | None:
    try:
        pid = int((state_dir(lab, node) / "agent.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(POLL_S)


def kill_and_wait(pid: int, sig: signal.Signals, timeout_s: float = 10.0) -> None:
    os.kill(pid, sig)
    wait_for(lambda: not pid_alive(pid), f"pid {pid} to exit after {sig.name}", timeout_s)


def meshctl_up(lab: Lab, node: Node) -> None:
    """`meshctl up`; when it fails, the agent's log tail is in the assertion message."""
    proc = lab.meshctl(node, ["up"], check=False)
    if proc.returncode != 0:
        log = state_dir(lab, node) / "agent.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no agent.log)"
        raise AssertionError(f"meshctl up on {node.name} exited {proc.returncode}: {proc.stderr}\n{tail}")


def ip_json(lab: Lab, node: Node, *args: str) -> list[dict[str, Any]]:
    out = lab.run(node, ["ip", "-j", *args]).stdout
    return list(json.loads(out or "[]"))


def fake_device_keys() -> DeviceKeys:
    return DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())


def add_members(checkout: Path, admin_key: Path, names: Sequence[str], now: int,
                endpoints: Callable[[int], tuple[str, ...]] = lambda _i: ()) -> list[DeviceKeys]:
    """Add `names` as approved members in one new state (serial + 1), as an admin would after
    approving each join request, but written at once. Returns their keys. Does not commit.

    Meant for building big meshes quickly; the records are genuine and signed.
    """
    key = load_signing_key(admin_key)
    co = admin.open_checkout(checkout)
    state = co.state
    used = {a for asg in state.peers.values() for a in asg.addresses}
    peers = dict(state.peers)
    all_keys = []
    offset = FAKE_ADDRESS_OFFSET
    for i, name in enumerate(names):
        keys = fake_device_keys()
        data, sig = make_request(keys, co.root.network_id, name, endpoints(i), now)
        (checkout / "peers" / f"{name}.json").write_bytes(data)
        (checkout / "peers" / f"{name}.json.sig").write_bytes(sig)
        v4 = state.ipv4_cidr[offset]
        while v4 in used:
            offset += 1
            v4 = state.ipv4_cidr[offset]
        used.add(v4)
        offset += 1
        v6 = state.ipv6_prefix[int(v4)]
        peers[name] = records.Assignment(verify.sha256_hex(data), (v4, v6), (), "")
        all_keys.append(keys)
    admin.write_state(co, replace(state, peers=peers), [key], now)
    return all_keys


def remove_members(checkout: Path, admin_key: Path, names: Sequence[str], now: int) -> None:
    """Revoke `names` in one new state (serial + 1), as `meshctl admin revoke` does one by one."""
    key = load_signing_key(admin_key)
    co = admin.open_checkout(checkout)
    peers = {n: a for n, a in co.state.peers.items() if n not in set(names)}
    for name in names:
        for suffix in ("", ".sig"):
            (checkout / "peers" / f"{name}.json{suffix}").unlink(missing_ok=True)
    admin.write_state(co, replace(co.state, peers=peers), [key], now)


# Runs inside the node's namespace (UNIX socket diagnostics are per namespace), polling `ss`
# without the cost of `ip netns exec` per poll: SIGKILL the agent the moment bytes wait in
# wireguard-go's UAPI socket, i.e. while the agent is still writing a big `set`. Only a big set
# does that (a get is 7 bytes). Prints the bytes that were waiting.
_KILL_MID_SET = """
import os, signal, subprocess, sys, time
pid, path, deadline = int(sys.argv[1]), sys.argv[2], time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    for line in subprocess.run(["ss", "-x", "-H", "-n"], capture_output=True, text=True).stdout.splitlines():
        f = line.split()
        # More queued than any `get=1` request: the kill must land in the big `set`, not in the
        # device read that comes before it (a 7-byte get caught in flight made this test flaky).
        if len(f) >= 5 and f[4] == path and int(f[2]) > 1024:
            os.kill(pid, signal.SIGKILL)
            print(f[2])
            sys.exit(0)
sys.exit(1)
"""


def start_kill_mid_set(lab: Lab, node: Node, pid: int, timeout_s: float = 60.0) -> subprocess.Popen[str]:
    """A watcher that SIGKILLs `pid` while it streams a WireGuard `set`; exit 0 once it did."""
    path = f"/var/run/wireguard/{interface(lab, node)}.sock"
    return lab.popen(node, [sys.executable, "-c", _KILL_MID_SET, str(pid), path, str(timeout_s)],
                     stdout=subprocess.PIPE)


def mesh_prefixes(member_ips: Sequence[str]) -> frozenset[str]:
    """The allowed IPs WireGuard shows for a member: its addresses as host prefixes."""
    return frozenset(str(ipaddress.ip_network(ip)) for ip in member_ips)
