"""meshctl's kernel WireGuard backend against the real module (inside the VM; see conftest.py).

Each node's meshctl calls run in a child that entered the node's namespace (`in_netns`), because
netlink acts on the caller's namespace. Children return plain, picklable views (no private keys).

    ns kA-xxxx                                  ns kB-xxxx
    veth 192.0.2.1/24   <------ veth ------>    veth 192.0.2.2/24
    wg   100.64.0.1/32, fd7a:115c:a1e0::1/128   wg   100.64.0.2/32, fd7a:115c:a1e0::2/128
         routes 100.64.0.0/10, fd7a:115c:a1e0::/48 (meshctl's router)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

import pytest
from kernel_harness import Node, Pair, in_netns, ping, wg_dump

from meshctl.keys import NodePrivate
from meshctl.wg.config import DeviceConfig, DeviceState, PeerConfig, plan_update

pytestmark = pytest.mark.netns

PORT_A: Final = 51820
PORT_B: Final = 51821
KEEPALIVE_S: Final = 25
MESH4: Final = ipaddress.IPv4Network("100.64.0.0/10")
MESH6: Final = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")

# Large enough that the update needs many netlink messages (one page each), plus one peer whose
# allowed IPs alone overflow a message, so continuation entries are exercised too.
MANY_PEERS: Final = 300
IPS_PER_PEER: Final = 4
WIDE_PEER_IPS: Final = 400

# (endpoint, allowed IPs as sorted strings, keepalive) per base64 public key.
PeerView = tuple[str | None, tuple[str, ...], int]


def _ips(prefixes: Any) -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in prefixes))


def config_view(config: DeviceConfig) -> dict[str, PeerView]:
    return {
        p.public_key.b64(): (p.endpoint, _ips(p.allowed_ips), p.persistent_keepalive)
        for p in config.peers
    }


def state_view(state: DeviceState) -> dict[str, PeerView]:
    return {
        p.public_key.b64(): (p.endpoint, _ips(p.allowed_ips), p.persistent_keepalive)
        for p in state.peers
    }


def dump_view(dump: list[list[str]]) -> tuple[str, int, dict[str, PeerView]]:
    """(public key, listen port, peers) from `wg show IF dump` fields."""
    iface, peer_lines = dump[0], dump[1:]
    peers: dict[str, PeerView] = {}
    for f in peer_lines:
        endpoint = None if f[2] == "(none)" else f[2]
        ips = () if f[3] == "(none)" else tuple(sorted(f[3].split(",")))
        keepalive = 0 if f[7] == "off" else int(f[7])
        peers[f[0]] = (endpoint, ips, keepalive)
    return iface[1], int(iface[2]), peers


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one meshctl pass did in a node's namespace (picklable, no private key)."""

    backend: str
    reason: str
    plan: tuple[str, ...]
    public_key: str | None
    listen_port: int
    peers: dict[str, PeerView]
    handshakes: dict[str, int | None]
    second_plan: tuple[str, ...]
    messages: int  # netlink set messages the plan needed
    router: tuple[str, ...]


def _sync(ifname: str, config: DeviceConfig, router_addrs: tuple[str, str] | None) -> SyncResult:
    """One reconcile pass, the way the agent does it: open, ensure, read, plan, apply, read."""
    from meshctl.wg.backend import open_backend
    from meshctl.wg.chunks import split_update

    backend, reason = open_backend(ifname, "auto")
    backend.ensure_device()
    update = plan_update(backend.read(), config)
    messages = len(split_update(update, ifname))
    backend.apply(update)
    state = backend.read()
    second = plan_update(state, config)
    router: tuple[str, ...] = ()
    if router_addrs is not None:
        from meshctl.router.config import RouterConfig, plan_router
        from meshctl.router.linux import apply_router, read_router

        desired = RouterConfig.for_node(
            ipv4=ipaddress.IPv4Address(router_addrs[0]),
            ipv6=ipaddress.IPv6Address(router_addrs[1]),
            ipv4_cidr=MESH4,
            ipv6_prefix=MESH6,
        )
        reached = apply_router(ifname, plan_router(read_router(ifname), desired))
        router = tuple(reached.render(ifname))
    return SyncResult(
        backend=backend.name,
        reason=reason,
        plan=tuple(update.describe()),
        public_key=state.public_key.b64() if state.public_key else None,
        listen_port=state.listen_port,
        peers=state_view(state),
        handshakes={p.public_key.b64(): p.last_handshake for p in state.peers},
        second_plan=tuple(second.describe()),
        messages=messages,
        router=router,
    )


def _read(ifname: str) -> tuple[str | None, int, dict[str, PeerView], dict[str, int | None]]:
    from meshctl.wg.backend import open_backend

    backend, _ = open_backend(ifname, "auto")
    state = backend.read()
    return (
        state.public_key.b64() if state.public_key else None,
        state.listen_port,
        state_view(state),
        {p.public_key.b64(): p.last_handshake for p in state.peers},
    )


def _node_config(key: NodePrivate, port: int, other: Node, other_key: NodePrivate,
                 other_port: int) -> DeviceConfig:
    return DeviceConfig(
        private_key=key,
        listen_port=port,
        peers=(
            PeerConfig(
                public_key=other_key.public(),
                allowed_ips=(
                    ipaddress.ip_network(f"{other.mesh4}/32"),
                    ipaddress.ip_network(f"{other.mesh6}/128"),
                ),
                endpoint=f"{other.underlay}:{other_port}",
                persistent_keepalive=KEEPALIVE_S,
            ),
        ),
    )


def _mesh_pair(pair: Pair) -> Pair:
    """The pair with meshctl-style mesh addresses (inside 100.64.0.0/10 and the ULA /48)."""
    a = Node(pair.a.ns, pair.a.ifname, pair.a.underlay, "100.64.0.1", "fd7a:115c:a1e0::1")
    b = Node(pair.b.ns, pair.b.ifname, pair.b.underlay, "100.64.0.2", "fd7a:115c:a1e0::2")
    return Pair(a, b)


def test_two_nodes_through_meshctl_kernel_backend(pair: Pair) -> None:
    pair = _mesh_pair(pair)
    key_a, key_b = NodePrivate.generate(), NodePrivate.generate()
    cfg_a = _node_config(key_a, PORT_A, pair.b, key_b, PORT_B)
    cfg_b = _node_config(key_b, PORT_B, pair.a, key_a, PORT_A)

    got_a = in_netns(pair.a.ns, _sync, pair.a.ifname, cfg_a, (pair.a.mesh4, pair.a.mesh6))
    got_b = in_netns(pair.b.ns, _sync, pair.b.ifname, cfg_b, (pair.b.mesh4, pair.b.mesh6))

    for got, key, port, cfg in ((got_a, key_a, PORT_A, cfg_a), (got_b, key_b, PORT_B, cfg_b)):
        # auto picked the kernel module, and says why.
        assert got.backend == "kernel", got.reason
        assert got.reason.startswith("kernel: ") and "module" in got.reason
        # The first plan did the whole job, the second identical plan is empty.
        assert got.plan[0] == f"set private key (public key {key.public().b64()})"
        assert f"set listen port {port}" in got.plan
        assert got.second_plan == ()
        assert got.public_key == key.public().b64()
        assert got.listen_port == port
        assert got.peers == config_view(cfg)
    # meshctl's router put the mesh address and route on the interface.
    assert "inet 100.64.0.1/32" in got_a.router
    assert any(line.startswith("route 100.64.0.0/10 ") for line in got_a.router)

    # Traffic flows both ways, by IPv4 and by IPv6.
    for src, dst in ((pair.a, pair.b), (pair.b, pair.a)):
        for target in (dst.mesh4, dst.mesh6):
            result = ping(src, target)
            assert result.returncode == 0, f"{src.ns} ping {target}:\n{result.stdout}"

    # `wg show` agrees with read(), on both nodes, after the handshake.
    for node, key in ((pair.a, key_a), (pair.b, key_b)):
        public, port, peers, handshakes = in_netns(node.ns, _read, node.ifname)
        dump = wg_dump(node)
        assert dump_view(dump) == (public, port, peers)
        assert public == key.public().b64()
        (peer_line,) = dump[1:]
        assert int(peer_line[4]) > 0, "the pings went through, so a handshake is recorded"
        assert handshakes[peer_line[0]] == int(peer_line[4])

    # A new pass with nothing changed (a new backend object, as in the next sync) touches nothing:
    # the handshake survives.
    before = in_netns(pair.a.ns, _read, pair.a.ifname)[3]
    again = in_netns(pair.a.ns, _sync, pair.a.ifname, cfg_a, (pair.a.mesh4, pair.a.mesh6))
    assert again.backend == "kernel"
    assert again.plan == () and again.messages == 0
    assert again.handshakes == before


def _many_peers_config(key: NodePrivate) -> DeviceConfig:
    peers = []
    for i in range(MANY_PEERS):
        hi, lo = divmod(i, 256)
        peers.append(
            PeerConfig(
                public_key=NodePrivate.generate().public(),
                allowed_ips=(
                    ipaddress.ip_network(f"100.{64 + hi}.{lo}.1/32"),
                    ipaddress.ip_network(f"10.{hi}.{lo}.0/24"),
                    ipaddress.ip_network(f"fd7a:115c:a1e0::{i:x}/128"),
                    ipaddress.ip_network(f"fd00:{i:x}::/64"),
                )[:IPS_PER_PEER],
                endpoint=(
                    f"203.0.113.{1 + i % 250}:{40000 + i}" if i % 2 else f"[2001:db8::{i:x}]:51820"
                ),
                # A few keepalives (each makes the kernel start a handshake: CPU under TCG).
                persistent_keepalive=KEEPALIVE_S if i % 50 == 0 else 0,
            )
        )
    wide = tuple(
        ipaddress.ip_network(f"172.16.{j // 256}.{j % 256}/32") for j in range(WIDE_PEER_IPS)
    )
    peers.append(PeerConfig(public_key=NodePrivate.generate().public(), allowed_ips=wide,
                            endpoint="203.0.113.254:51820", persistent_keepalive=KEEPALIVE_S))
    return DeviceConfig(private_key=key, listen_port=PORT_A, peers=tuple(peers))


def test_large_peer_list_is_split_applied_and_read_back_whole(pair: Pair) -> None:
    node = pair.a
    key = NodePrivate.generate()
    cfg = _many_peers_config(key)
    assert len(cfg.peers) == MANY_PEERS + 1

    got = in_netns(node.ns, _sync, node.ifname, cfg, None)

    assert got.backend == "kernel", got.reason
    assert got.messages > 10, "the update must need splitting across netlink messages"
    assert len(got.plan) == 2 + MANY_PEERS + 1  # key, port, one line per peer
    assert got.peers == config_view(cfg)  # read() got every peer and every allowed IP back
    assert got.second_plan == ()

    dump = wg_dump(node)
    assert len(dump) == 1 + MANY_PEERS + 1
    assert dump_view(dump) == (key.public().b64(), PORT_A, config_view(cfg))

    # Change one peer, remove another: the plan names exactly those two, and the device follows.
    changed = cfg.peers[1]
    removed = cfg.peers[2]
    new_ips = (ipaddress.ip_network("100.127.255.1/32"),)
    cfg2 = DeviceConfig(
        private_key=key,
        listen_port=PORT_A,
        peers=tuple(
            PeerConfig(changed.public_key, new_ips, changed.endpoint, changed.persistent_keepalive)
            if p is changed else p
            for p in cfg.peers if p is not removed
        ),
    )
    got2 = in_netns(node.ns, _sync, node.ifname, cfg2, None)
    assert got2.plan == (
        f"update peer {changed.public_key.b64()}: allowed ips 100.127.255.1/32",
        f"remove peer {removed.public_key.b64()}",
    )
    assert got2.peers == config_view(cfg2)
    assert got2.second_plan == ()
    assert dump_view(wg_dump(node))[2] == config_view(cfg2)
