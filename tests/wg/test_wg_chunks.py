"""Splitting kernel (netlink) updates into page-sized messages, like wireguard-tools."""

from __future__ import annotations

import ipaddress

import pytest
from wglab import fixed_private

from meshctl.keys import NodePrivate
from meshctl.wg.chunks import (
    MESSAGE_BUDGET_BYTES,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    message_size,
    split_update,
    update_entries,
)
from meshctl.wg.config import DeviceConfig, DeviceState, PeerConfig, PeerState, plan_update

SELF = fixed_private(1)
IFNAME = "mesh0"


def many_peers(n: int) -> DeviceConfig:
    peers = []
    for i in range(n):
        key = NodePrivate(((i + 1) << 8).to_bytes(32, "little")).public()
        peers.append(PeerConfig(key, (ipaddress.ip_network(f"100.64.{i // 250}.{i % 250 + 1}/32"),
                                      ipaddress.ip_network(f"fd7a::{i + 1:x}/128")),
                                f"192.0.2.{i % 250 + 1}:51820", 25))
    return DeviceConfig(SELF, 51820, tuple(peers))


def test_empty_update_sends_nothing() -> None:
    cfg = many_peers(3)
    state = DeviceState(SELF, 51820, tuple(
        PeerState(p.public_key, p.endpoint, p.allowed_ips, p.persistent_keepalive)
        for p in cfg.peers))
    assert split_update(plan_update(state, cfg), IFNAME) == []


def test_small_update_is_one_message() -> None:
    msgs = split_update(plan_update(DeviceState(), many_peers(3)), IFNAME)
    assert len(msgs) == 1
    assert msgs[0].private_key == SELF and msgs[0].listen_port == 51820
    # 3 peers, then 3 keepalive entries
    assert [e.flags for e in msgs[0].peers] == [WGPEER_F_REPLACE_ALLOWEDIPS] * 3 + [
        WGPEER_F_UPDATE_ONLY] * 3


def test_thousand_peers_split_within_budget_in_order() -> None:
    update = plan_update(DeviceState(), many_peers(1000))
    msgs = split_update(update, IFNAME)
    assert len(msgs) > 10
    assert all(message_size(IFNAME, m) <= MESSAGE_BUDGET_BYTES for m in msgs)
    assert msgs[0].private_key == SELF and all(m.private_key is None for m in msgs[1:])
    flat = [e for m in msgs for e in m.peers]
    assert flat == update_entries(update)  # nothing lost, nothing reordered
    first_keepalive = next(i for i, e in enumerate(flat) if e.persistent_keepalive is not None)
    assert all(e.persistent_keepalive is not None for e in flat[first_keepalive:])


def test_removals_are_small_entries() -> None:
    cfg = many_peers(300)
    state = DeviceState(SELF, 51820, tuple(PeerState(p.public_key) for p in cfg.peers))
    msgs = split_update(plan_update(state, DeviceConfig(SELF, 51820, ())), IFNAME)
    flat = [e for m in msgs for e in m.peers]
    assert len(flat) == 300 and all(e.flags == WGPEER_F_REMOVE_ME for e in flat)
    assert all(message_size(IFNAME, m) <= MESSAGE_BUDGET_BYTES for m in msgs)


def test_one_peer_with_many_allowed_ips_is_continued() -> None:
    key = fixed_private(2).public()
    ips = tuple(ipaddress.ip_network(f"fd00:{i:x}::/64") for i in range(500))
    update = plan_update(DeviceState(), DeviceConfig(SELF, 51820, (
        PeerConfig(key, ips, "[2001:db8::1]:51820", 0),)))
    msgs = split_update(update, IFNAME)
    parts = [e for m in msgs for e in m.peers]
    assert len(msgs) >= 5 and all(message_size(IFNAME, m) <= MESSAGE_BUDGET_BYTES for m in msgs)
    assert parts[0].flags == WGPEER_F_REPLACE_ALLOWEDIPS and parts[0].endpoint is not None
    assert all(p.flags == WGPEER_F_UPDATE_ONLY and p.endpoint is None for p in parts[1:])
    assert [ip for p in parts for ip in p.allowed_ips] == sorted(ips, key=lambda n: n.network_address)


def test_budget_too_small_is_refused() -> None:
    with pytest.raises(ValueError):
        split_update(plan_update(DeviceState(), many_peers(1)), IFNAME, budget=100)


def test_estimate_matches_pyroute2_encoding_and_decodes_back() -> None:
    """Encode each chunk with pyroute2's wgmsg (no kernel needed) and parse it as a dump."""
    pytest.importorskip("pyroute2")
    from pyroute2.netlink.generic.wireguard import wgmsg

    from meshctl.wg.kernel import encode_message, state_from_messages

    cfg = many_peers(120)
    big = PeerConfig(fixed_private(7).public(),
                     tuple(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24") for i in range(300)),
                     "10.0.0.7:1", 0)
    cfg = DeviceConfig(SELF, 51820, (*cfg.peers, big))
    decoded = []
    for chunk in split_update(plan_update(DeviceState(), cfg), IFNAME):
        msg = encode_message(IFNAME, chunk)
        msg.encode()
        assert len(msg.data) == message_size(IFNAME, chunk) <= MESSAGE_BUDGET_BYTES
        back = wgmsg(msg.data)
        back.decode()
        decoded.append(back)
    state = state_from_messages(decoded)
    assert state.private_key == SELF and state.listen_port == 51820
    assert plan_update(state, cfg).is_empty()
