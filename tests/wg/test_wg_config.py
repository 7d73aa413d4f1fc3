"""plan_update: golden plans and a sequence of configs applied to a fake device."""

from __future__ import annotations

import base64
import ipaddress

import pytest
from wglab import FakeBackend, fixed_private

from meshctl.errors import UsageError
from meshctl.wg.config import (
    DeviceConfig,
    DeviceState,
    PeerConfig,
    PeerState,
    apply_update,
    canonical_endpoint,
    plan_update,
)

SELF = fixed_private(1)
P2, P3, P4 = (fixed_private(n).public() for n in (2, 3, 4))
NAMES = {"{SELF}": SELF.public().b64(), "{P2}": P2.b64(), "{P3}": P3.b64(), "{P4}": P4.b64()}


def net(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def golden(text: str) -> list[str]:
    for k, v in NAMES.items():
        text = text.replace(k, v)
    return [ln.strip() for ln in text.strip().splitlines()]


def peer(key, *ips: str, endpoint: str | None = None, keepalive: int = 25) -> PeerConfig:  # type: ignore[no-untyped-def]
    return PeerConfig(public_key=key, allowed_ips=net(*ips), endpoint=endpoint,
                      persistent_keepalive=keepalive)


CFG2 = peer(P2, "100.64.0.2/32", "fd7a::2/128", endpoint="192.0.2.2:51820")
CFG3 = peer(P3, "100.64.0.3/32", "fd7a::3/128", endpoint="[2001:db8::3]:51820")
BASE = DeviceConfig(private_key=SELF, listen_port=51820, peers=(CFG2, CFG3))


def test_fresh_device_gets_everything() -> None:
    lines = plan_update(DeviceState(listen_port=40000), BASE).describe()
    assert lines[:2] == golden("""
        set private key (public key {SELF})
        set listen port 51820
    """)
    assert sorted(lines[2:]) == sorted(golden("""
        add peer {P2}: endpoint 192.0.2.2:51820; allowed ips 100.64.0.2/32, fd7a::2/128; keepalive 25
        add peer {P3}: endpoint [2001:db8::3]:51820; allowed ips 100.64.0.3/32, fd7a::3/128; keepalive 25
    """))


def test_private_key_never_printed() -> None:
    update = plan_update(DeviceState(), BASE)
    text = "\n".join(update.describe()) + repr(update)
    raw = SELF.private_bytes_for_device()
    assert base64.b64encode(raw).decode() not in text
    assert raw.hex() not in text


def test_same_config_is_an_empty_plan() -> None:
    state = apply_update(DeviceState(listen_port=40000), plan_update(DeviceState(), BASE))
    update = plan_update(state, BASE)
    assert update.is_empty()
    assert update.describe() == []


def test_one_changed_endpoint_touches_only_that_peer() -> None:
    state = apply_update(DeviceState(), plan_update(DeviceState(), BASE))
    changed = DeviceConfig(SELF, 51820, (CFG2, peer(P3, "100.64.0.3/32", "fd7a::3/128",
                                                              endpoint="198.51.100.3:4000")))
    assert plan_update(state, changed).describe() == golden(
        "update peer {P3}: endpoint 198.51.100.3:4000"
    )


def test_allowed_ips_replaced_only_when_changed_order_ignored() -> None:
    state = apply_update(DeviceState(), plan_update(DeviceState(), BASE))
    reordered = DeviceConfig(SELF, 51820, (
        PeerConfig(P2, net("fd7a::2/128", "100.64.0.2/32"), "192.0.2.2:51820", 25), CFG3))
    assert plan_update(state, reordered).is_empty()
    grown = DeviceConfig(SELF, 51820, (
        peer(P2, "100.64.0.2/32", "fd7a::2/128", "10.1.0.0/16", endpoint="192.0.2.2:51820"),
        CFG3))
    assert plan_update(state, grown).describe() == golden(
        "update peer {P2}: allowed ips 10.1.0.0/16, 100.64.0.2/32, fd7a::2/128"
    )


def test_keepalive_change_and_removal() -> None:
    state = apply_update(DeviceState(), plan_update(DeviceState(), BASE))
    cfg = DeviceConfig(SELF, 51820, (peer(P2, "100.64.0.2/32", "fd7a::2/128",
                                          endpoint="192.0.2.2:51820", keepalive=0),))
    assert plan_update(state, cfg).describe() == golden("""
        update peer {P2}: keepalive off
        remove peer {P3}
    """)


def test_endpoint_none_keeps_roamed_endpoint() -> None:
    state = DeviceState(private_key=SELF, listen_port=51820, peers=(
        PeerState(P2, endpoint="203.0.113.9:3333", allowed_ips=net("100.64.0.2/32"),
                  persistent_keepalive=25),))
    cfg = DeviceConfig(SELF, 51820, (peer(P2, "100.64.0.2/32"),))
    assert plan_update(state, cfg).is_empty()


def test_listen_port_zero_keeps_the_port_in_use() -> None:
    state = DeviceState(private_key=SELF, listen_port=43210)
    assert plan_update(state, DeviceConfig(SELF, 0, ())).is_empty()
    assert plan_update(state, DeviceConfig(SELF, 51820, ())).describe() == ["set listen port 51820"]


def test_new_private_key_is_planned() -> None:
    state = DeviceState(private_key=fixed_private(9), listen_port=51820)
    assert plan_update(state, DeviceConfig(SELF, 51820, ())).describe() == golden(
        "set private key (public key {SELF})"
    )


@pytest.mark.parametrize("bad", ["example.com:51820", "1.2.3.4", "fd00::1:51820", "1.2.3.4:0",
                                 "1.2.3.4:70000", "[fd00::1]:x", ":51820"])
def test_bad_endpoints_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="Unable to parse endpoint"):
        canonical_endpoint(bad)


def test_duplicate_peer_refused() -> None:
    with pytest.raises(UsageError, match="listed twice"):
        DeviceConfig(SELF, 1, (peer(P2, "100.64.0.2/32"), peer(P2, "100.64.0.9/32")))


def test_sequence_on_fake_device_keeps_handshakes() -> None:
    """Apply configs one after another; after each compare the rendered device with golden text."""
    dev = FakeBackend()

    def sync(cfg: DeviceConfig) -> int:
        before = len(dev.applied)
        dev.apply(plan_update(dev.read(), cfg))
        return len(dev.applied) - before

    steps: list[tuple[DeviceConfig, int, str]] = [
        (BASE, 1, """
            interface: public key {SELF}, listening port 51820
            peer nodekey:SHORT2: endpoint 192.0.2.2:51820; allowed ips 100.64.0.2/32, fd7a::2/128; keepalive 25
            peer nodekey:SHORT3: endpoint [2001:db8::3]:51820; allowed ips 100.64.0.3/32, fd7a::3/128; keepalive 25
        """),
        (BASE, 0, None),  # unchanged: no WireGuard call at all
        (DeviceConfig(SELF, 51820, (*BASE.peers, peer(P4, "100.64.0.4/32"))), 1, """
            interface: public key {SELF}, listening port 51820
            peer nodekey:SHORT2: endpoint 192.0.2.2:51820; allowed ips 100.64.0.2/32, fd7a::2/128; keepalive 25
            peer nodekey:SHORT3: endpoint [2001:db8::3]:51820; allowed ips 100.64.0.3/32, fd7a::3/128; keepalive 25
            peer nodekey:SHORT4: endpoint (none); allowed ips 100.64.0.4/32; keepalive 25
        """),
        (DeviceConfig(SELF, 51820, (CFG2, peer(P4, "100.64.0.4/32"))), 1, """
            interface: public key {SELF}, listening port 51820
            peer nodekey:SHORT2: endpoint 192.0.2.2:51820; allowed ips 100.64.0.2/32, fd7a::2/128; keepalive 25
            peer nodekey:SHORT4: endpoint (none); allowed ips 100.64.0.4/32; keepalive 25
        """),
    ]
    shorts = {"SHORT2": P2.short()[8:], "SHORT3": P3.short()[8:], "SHORT4": P4.short()[8:]}
    for i, (cfg, calls, expected) in enumerate(steps):
        assert sync(cfg) == calls, f"step {i}"
        if expected is not None:
            text = expected
            for k, v in shorts.items():
                text = text.replace(k, v)
            assert sorted(dev.read().render()) == sorted(golden(text)), f"step {i}"
        if i == 0:
            # The peer shakes hands; later steps must not reset it.
            st = dev.read()
            dev.state = DeviceState(st.private_key, st.listen_port, tuple(
                PeerState(p.public_key, p.endpoint, p.allowed_ips, p.persistent_keepalive,
                          last_handshake=1_700_000_000, rx_bytes=100, tx_bytes=200)
                for p in st.peers))
    p2 = dev.read().peer(P2)
    assert p2 is not None and p2.last_handshake == 1_700_000_000 and p2.rx_bytes == 100
    # Only the new and the removed peers were ever written after the first step.
    touched = {u.public_key for upd in dev.applied[1:] for u in upd.peers}
    assert touched == {P3, P4}


def test_moving_an_allowed_ip_between_peers() -> None:
    dev = FakeBackend()
    one = DeviceConfig(SELF, 1, (peer(P2, "100.64.0.2/32", "10.9.0.0/16"), peer(P3, "100.64.0.3/32")))
    two = DeviceConfig(SELF, 1, (peer(P2, "100.64.0.2/32"), peer(P3, "100.64.0.3/32", "10.9.0.0/16")))
    dev.apply(plan_update(dev.read(), one))
    dev.apply(plan_update(dev.read(), two))
    assert plan_update(dev.read(), two).is_empty()


def test_an_update_only_peer_changes_a_peer_the_device_has_and_never_creates_one() -> None:
    """The path engine's WireGuard-only updates between passes: encoded with update_only in UAPI
    and WGPEER_F_UPDATE_ONLY for netlink; a device without the peer stays as it is."""
    from meshctl.keys import NodePrivate
    from meshctl.wg.chunks import WGPEER_F_UPDATE_ONLY, update_entries
    from meshctl.wg.config import DeviceUpdate, PeerUpdate, apply_update
    from meshctl.wg.uapi import marshal_set

    have, gone = NodePrivate.generate().public(), NodePrivate.generate().public()
    state = DeviceState(NodePrivate.generate(), 51820, (PeerState(have, "192.0.2.1:51820"),))
    update = DeviceUpdate(peers=(PeerUpdate(have, update_only=True, endpoint="192.0.2.9:1"),
                                 PeerUpdate(gone, update_only=True, endpoint="192.0.2.8:1", persistent_keepalive=25)))
    after = apply_update(state, update)
    assert [(p.public_key, p.endpoint) for p in after.peers] == [(have, "192.0.2.9:1")]
    text = marshal_set(update).decode()
    assert text.count("update_only=true") == 3  # each peer's section, and the keepalive's
    assert all(e.flags & WGPEER_F_UPDATE_ONLY for e in update_entries(update))


# --- the fast text parsers agree with ipaddress ----------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from meshctl.wg.config import ip_address, parse_prefix  # noqa: E402

V4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
V6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
# Text near the forms WireGuard prints, and the odd ones ipaddress takes or refuses.
PREFIX_CHARS = st.sampled_from(list("0123456789abcdefABCDEF:./%x ") + ["\x00", "٣"])


def same_result(fast, slow, text: str) -> None:  # type: ignore[no-untyped-def]
    try:
        want = slow(text)
    except ValueError:
        with pytest.raises(ValueError):
            fast(text)
        return
    got = fast(text)
    assert (got, type(got)) == (want, type(want)), text


@given(st.one_of(V4, V6), st.integers(0, 130), st.booleans())
def test_parse_prefix_agrees_with_ipaddress_on_real_prefixes(addr, length: int, upper: bool) -> None:  # type: ignore[no-untyped-def]
    text = f"{addr}/{length}"
    same_result(parse_prefix, lambda t: ipaddress.ip_network(t, strict=False), text.upper() if upper else text)


@given(st.text(PREFIX_CHARS, max_size=45))
def test_parse_prefix_agrees_with_ipaddress_on_any_text(text: str) -> None:
    same_result(parse_prefix, lambda t: ipaddress.ip_network(t, strict=False), text)


@pytest.mark.parametrize("text", ["1.2.3.4/0032", "1.2.3.4/255.255.0.0", "10.0.0.1", "fe80::1%eth0/128",
                                  "::ffff:1.2.3.4/128", "FD00::1/64", "01.2.3.4/32", "1.2.3.4/33",
                                  "fd00::/129", "1.2.3.4/ 3", "1.2.3.4\x00/32", "/32", "1.2.3.4/"])
def test_parse_prefix_agrees_with_ipaddress_on_odd_forms(text: str) -> None:
    same_result(parse_prefix, lambda t: ipaddress.ip_network(t, strict=False), text)


@given(st.one_of(V4.map(str), V6.map(str), V6.map(lambda a: a.exploded.upper()), st.text(PREFIX_CHARS, max_size=45)))
def test_ip_address_agrees_with_ipaddress(text: str) -> None:
    same_result(ip_address, ipaddress.ip_address, text)


ENDPOINT_CHARS = st.sampled_from(list("0123456789.:[]abcdef ") + ["\x00", "٣"])


@given(st.one_of(
    st.tuples(V4, st.integers(0, 70000)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(V6, st.integers(0, 70000)).map(lambda t: f"[{t[0]}]:{t[1]}"),
    st.text(ENDPOINT_CHARS, max_size=30)))
def test_canonical_endpoint_agrees_with_parse_and_format(text: str) -> None:
    """The fast path for plain IPv4 endpoints returns what parsing and formatting would."""
    from meshctl.wg.config import canonical_endpoint, format_endpoint, parse_endpoint

    try:
        want = format_endpoint(*parse_endpoint(text))
    except UsageError:
        with pytest.raises(UsageError):
            canonical_endpoint(text)
        return
    assert canonical_endpoint(text) == want
