"""Baseline under the real kernel module: pyroute2's own WireGuard API, no meshctl code.

If this passes and test_kernel_wireguard.py fails, the fault is in meshctl's kernel backend, not in
the VM, the module or pyroute2.
"""

from __future__ import annotations

import base64

import pytest
from kernel_harness import Node, Pair, add_mesh_addresses, in_netns, ping, wg_dump

from meshctl.keys import NodePrivate

pytestmark = pytest.mark.netns

PORT_A = 51820
PORT_B = 51821


def _configure_raw(
    ifname: str, private_b64: str, port: int, peer_b64: str, endpoint: str, peer_port: int,
    allowed: list[str],
) -> dict[str, int]:
    from pyroute2 import IPRoute, WireGuard

    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="wireguard")
    with WireGuard() as wg:
        wg.set(
            ifname,
            private_key=private_b64,
            listen_port=port,
            peer={
                "public_key": peer_b64,
                "endpoint_addr": endpoint,
                "endpoint_port": peer_port,
                "persistent_keepalive": 25,
                "allowed_ips": allowed,
            },
        )
        info = wg.info(ifname)[0]
        return {
            "listen_port": info.get("WGDEVICE_A_LISTEN_PORT"),
            "peers": len(info.get("WGDEVICE_A_PEERS") or []),
        }


def _b64(key: NodePrivate) -> str:
    return base64.b64encode(key.private_bytes_for_device()).decode()


def _setup(node: Node, key: NodePrivate, port: int, other: Node, other_key: NodePrivate,
           other_port: int) -> None:
    got = in_netns(
        node.ns, _configure_raw, node.ifname, _b64(key), port, other_key.public().b64(),
        other.underlay, other_port, [f"{other.mesh4}/32", f"{other.mesh6}/128"],
    )
    assert got == {"listen_port": port, "peers": 1}
    add_mesh_addresses(node)


def test_pyroute2_tunnel_pings_over_kernel_wireguard(pair: Pair) -> None:
    key_a, key_b = NodePrivate.generate(), NodePrivate.generate()
    _setup(pair.a, key_a, PORT_A, pair.b, key_b, PORT_B)
    _setup(pair.b, key_b, PORT_B, pair.a, key_a, PORT_A)

    for target in (pair.b.mesh4, pair.b.mesh6):
        result = ping(pair.a, target)
        assert result.returncode == 0, f"ping {target}: {result.stdout}{result.stderr}"

    dump = wg_dump(pair.a)
    assert dump[0][1] == key_a.public().b64()
    assert dump[1][0] == key_b.public().b64()
    assert dump[1][4] != "0", "a ping went through, so a handshake must be recorded"
