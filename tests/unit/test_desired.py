"""The pure desired-state core: peers, addresses, keepalive, filter, DNS; and not fighting working tunnels."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from meshctl.agent.desired import KEEPALIVE_S, desired
from meshctl.agent.inputs import Inputs
from meshctl.agent.plan import keep_working_endpoints
from meshctl.coord.netmap import NetMap, NetworkSettings, Peer
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey
from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceState, PeerState, plan_update

NOW = 1_800_000_000
POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


def peer(name: str, n: int) -> Peer:
    v4 = ipaddress.IPv4Address(f"100.64.0.{n}")
    return Peer(name, SigningKey.generate().public(), NodePrivate.generate().public(),
                DiscoPrivate.generate().public(), (v4, ipaddress.IPv6Address(f"fd00::{n}")))


def netmap() -> NetMap:
    net = NetworkSettings("a" * 32, "acme", ipaddress.IPv4Network("100.64.0.0/10"),
                          ipaddress.IPv6Network("fd00::/48"), "acme.mesh")
    return NetMap(net, 2, NOW + 1000, "0" * 64, (peer("a", 1), peer("b", 2), peer("c", 3)),
                  policy_text=POLICY, self_name="a")


def inputs(nm: NetMap, endpoints: dict[str, str | None], key: NodePrivate | None = None,
           serve_dns: bool = False) -> Inputs:
    return Inputs(nm, key or NodePrivate.generate(), 51820, endpoints, serve_dns=serve_dns)


def test_one_peer_per_other_member_with_its_addresses() -> None:
    nm = netmap()
    d = desired(inputs(nm, {"b": "192.0.2.2:51820"}))
    by_key = {p.public_key: p for p in d.wg.peers}
    assert set(by_key) == {nm.peer("b").wg_public_key, nm.peer("c").wg_public_key}  # type: ignore[union-attr]
    b, c = by_key[nm.peer("b").wg_public_key], by_key[nm.peer("c").wg_public_key]  # type: ignore[union-attr]
    assert [str(x) for x in b.allowed_ips] == ["100.64.0.2/32", "fd00::2/128"]
    assert (b.endpoint, b.persistent_keepalive) == ("192.0.2.2:51820", KEEPALIVE_S)
    assert (c.endpoint, c.persistent_keepalive) == (None, 0)  # no endpoint: no keepalive into the void
    assert {str(a) for a in d.router.addresses} == {"100.64.0.1/32", "fd00::1/128"}
    assert d.packet_filter is not None and d.policy_error is None
    assert d.dns is None  # no MagicDNS served here: a cron pass restores what an agent left


def test_bad_policy_keeps_the_last_filter() -> None:
    d = desired(inputs(replace(netmap(), policy_text="{"), {}))
    assert d.packet_filter is None and d.policy_error and d.policy_error.startswith("policy.hujson:")


def test_magicdns_is_part_of_the_desired_state_where_it_is_served() -> None:
    d = desired(inputs(netmap(), {}, serve_dns=True))
    assert d.dns is not None
    assert d.dns.domain == "acme.mesh"
    assert d.dns.own_addresses == ("100.100.100.100", "100.64.0.1", "fd00::1")
    assert "64.100.in-addr.arpa" in d.dns.reverse_domains


def test_desired_is_a_pure_function_of_its_inputs() -> None:
    i = inputs(netmap(), {"b": "192.0.2.2:51820"}, serve_dns=True)
    assert desired(i) == desired(i)
    assert desired(replace(i, endpoints={"b": "192.0.2.9:51820"})) != desired(i)


def test_a_working_tunnel_keeps_its_endpoint_and_keepalive() -> None:
    nm = netmap()
    key = NodePrivate.generate()
    d = desired(inputs(nm, {}, key))  # a restarted agent: no paths known yet
    b, c = nm.peer("b"), nm.peer("c")
    assert b is not None and c is not None
    state = DeviceState(key, 51820, (
        PeerState(b.wg_public_key, "192.0.2.2:51820", (ipaddress.ip_network("100.64.0.2/32"),
                                                       ipaddress.ip_network("fd00::2/128")),
                  KEEPALIVE_S, NOW - 10),
        PeerState(c.wg_public_key, "192.0.2.3:51820", (ipaddress.ip_network("100.64.0.3/32"),
                                                       ipaddress.ip_network("fd00::3/128")),
                  KEEPALIVE_S, NOW - HANDSHAKE_FRESH_S - 1),
    ))
    update = plan_update(state, keep_working_endpoints(d.wg, state, NOW))
    # b's tunnel works: untouched. c's went stale: its keepalive is turned off until a path is found.
    assert [u.public_key for u in update.peers] == [c.wg_public_key]
    assert update.peers[0].persistent_keepalive == 0
