"""The digests that let a no-op pass skip the work: they change exactly when a plan could."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from meshctl.agent.applied import (
    FULL_PASS_INTERVAL_S,
    Applied,
    device_digest,
    inputs_digest,
    report_digest,
    uapi_digest,
)
from meshctl.agent.desired import HANDSHAKE_FRESH_S, KEEPALIVE_S, compute_desired, keep_working_endpoints
from meshctl.keys import NodePrivate
from meshctl.router.config import RouterState
from meshctl.wg.config import DeviceState, PeerState, plan_update
from tests.unit.test_desired import NOW, netmap

KEY = NodePrivate.generate()
NM = netmap()  # its keys are random: one map for the whole module
INPUTS = dict(state_sha256="a" * 64, self_name="a", interface="mesh0", backend_choice="auto",
              listen_port=51820, wireguard_key_file=b"secret-key-file\n", endpoint_overrides={"b": "192.0.2.2:1"},
              extra_addresses=(ipaddress.ip_interface("100.100.100.100/32"),))


def device(handshake: int | None = NOW - 10, rx: int = 0) -> DeviceState:
    b = NM.peer("b")
    assert b is not None
    return DeviceState(KEY, 51820, (
        PeerState(b.wg_public_key, "192.0.2.2:51820", (ipaddress.ip_network("100.64.0.2/32"),),
                  KEEPALIVE_S, handshake, rx, rx),
    ))


@pytest.mark.parametrize("field,value", [
    ("state_sha256", "b" * 64), ("self_name", "b"), ("interface", "mesh1"), ("backend_choice", "kernel"),
    ("listen_port", 41641), ("wireguard_key_file", b"other"), ("endpoint_overrides", {"b": None}),
    ("extra_addresses", ()),
])
def test_every_input_counts(field: str, value: object) -> None:
    assert inputs_digest(**{**INPUTS, field: value}) != inputs_digest(**INPUTS)  # type: ignore[arg-type]


def test_the_key_is_never_in_a_digest() -> None:
    digest = inputs_digest(**INPUTS)  # type: ignore[arg-type]
    assert "secret" not in digest and len(digest) == 64


def test_counters_and_handshake_times_do_not_count() -> None:
    assert device_digest(device(NOW - 10, 0), NOW) == device_digest(device(NOW - 100, 12345), NOW)


def test_a_tunnel_going_stale_counts_because_the_plan_changes() -> None:
    d = compute_desired(NM, KEY, 51820, {})
    fresh, stale = device(NOW - 10), device(NOW - HANDSHAKE_FRESH_S - 1)
    assert device_digest(fresh, NOW) != device_digest(stale, NOW)
    plans = [plan_update(s, keep_working_endpoints(d, s, NOW).wg) for s in (fresh, stale)]
    assert plans[0] != plans[1]


@pytest.mark.parametrize("change", [
    lambda s: replace(s, listen_port=1),
    lambda s: replace(s, private_key=NodePrivate.generate()),
    lambda s: replace(s, peers=()),
    lambda s: replace(s, peers=(replace(s.peers[0], endpoint="192.0.2.9:51820"),)),
    lambda s: replace(s, peers=(replace(s.peers[0], persistent_keepalive=0),)),
    lambda s: replace(s, peers=(replace(s.peers[0], allowed_ips=()),)),
])
def test_a_manual_wg_set_counts(change) -> None:  # type: ignore[no-untyped-def]
    assert device_digest(change(device()), NOW) != device_digest(device(), NOW)


def test_a_record_is_valid_for_its_inputs_and_a_while() -> None:
    rec = Applied("i", "d", "userspace", NOW, resolves_names=False)
    assert rec.still_valid("i", NOW + FULL_PASS_INTERVAL_S - 1)
    assert not rec.still_valid("j", NOW)
    assert not rec.still_valid("i", NOW + FULL_PASS_INTERVAL_S)  # routes and nft get re-read
    assert not rec.still_valid("i", NOW - 1)  # the clock went back
    assert not replace(rec, resolves_names=True).still_valid("i", NOW)  # DNS may have moved


def test_a_report_depends_on_the_version_and_the_host() -> None:
    base = report_digest("i", "0.1.0", device(), RouterState(), None, NOW)
    assert report_digest("i", "0.2.0", device(), RouterState(), None, NOW) != base
    assert report_digest("i", "0.1.0", device(), RouterState(exists=True), None, NOW) != base
    assert report_digest("i", "0.1.0", device(), RouterState(), [{"table": {}}], NOW) != base
    assert report_digest("i", "0.1.0", device(NOW - 20, 7), RouterState(), None, NOW) == base


def uapi_reply(peers: list[tuple[str, str, int, int, list[str]]], errno: int = 0) -> bytes:
    """A wireguard-go `get=1` reply: (key hex, endpoint, keepalive, handshake sec, allowed ips)."""
    lines = ["private_key=" + "11" * 32, "listen_port=51820"]
    for key, endpoint, keepalive, handshake, ips in peers:
        lines += [f"public_key={key}", "preshared_key=" + "00" * 32, "protocol_version=1",
                  f"endpoint={endpoint}", f"last_handshake_time_sec={handshake}", "last_handshake_time_nsec=5",
                  "tx_bytes=100", "rx_bytes=200", f"persistent_keepalive_interval={keepalive}",
                  *(f"allowed_ip={ip}" for ip in ips)]
    return ("\n".join([*lines, f"errno={errno}"]) + "\n\n").encode()


A, B = "aa" * 32, "bb" * 32
PEERS = [(A, "192.0.2.1:51820", 25, NOW - 10, ["100.64.0.1/32", "fd00::1/128"]),
         (B, "192.0.2.2:51820", 0, 0, ["100.64.0.2/32"])]


def test_a_raw_reply_digest_ignores_order_counters_and_handshake_times() -> None:
    base = uapi_digest(uapi_reply(PEERS), NOW)
    assert base is not None and "11" * 32 not in base
    shuffled = [PEERS[1], (A, "192.0.2.1:51820", 25, NOW - 20, ["fd00::1/128", "100.64.0.1/32"])]
    assert uapi_digest(uapi_reply(shuffled), NOW) == base
    assert uapi_digest(uapi_reply(PEERS, errno=1), NOW) is None


@pytest.mark.parametrize("peers", [
    [(A, "192.0.2.9:51820", 25, NOW - 10, ["100.64.0.1/32", "fd00::1/128"]), PEERS[1]],  # endpoint
    [(A, "192.0.2.1:51820", 7, NOW - 10, ["100.64.0.1/32", "fd00::1/128"]), PEERS[1]],  # keepalive
    [(A, "192.0.2.1:51820", 25, NOW - 10, ["100.64.0.1/32"]), PEERS[1]],  # allowed ips
    [(A, "192.0.2.1:51820", 25, NOW - HANDSHAKE_FRESH_S, ["100.64.0.1/32", "fd00::1/128"]), PEERS[1]],  # stale
    [PEERS[0]],  # a peer removed
])
def test_a_raw_reply_digest_sees_what_a_plan_sees(peers: list[tuple[str, str, int, int, list[str]]]) -> None:
    assert uapi_digest(uapi_reply(peers), NOW) != uapi_digest(uapi_reply(PEERS), NOW)
