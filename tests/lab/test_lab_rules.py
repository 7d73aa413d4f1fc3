"""Pure parts of the lab: nft and coturn text, the lab's small STUN codec, naming."""

from __future__ import annotations

import os
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import rules
from lab.core import Lab, meshctl_argv
from lab.udptool import (
    MAGIC_COOKIE,
    StunParseError,
    binding_request,
    parse_binding_response,
)

TXID = bytes(range(12))


@pytest.mark.parametrize("profile", rules.PROFILES)
def test_every_profile_masquerades_on_the_wan_only(profile: str) -> None:
    text = rules.nat_ruleset(profile, "wan1", "lan1")
    masq = [line.strip() for line in text.splitlines() if "masquerade" in line]
    assert len(masq) == 1 and masq[0].startswith('oifname "wan1"')


def test_profiles_differ_where_designed() -> None:
    text = {p: rules.nat_ruleset(p, "wan1", "lan1") for p in rules.PROFILES}
    assert "fully-random" in text[rules.SYMMETRIC]
    assert "fully-random" not in text[rules.PORT_RESTRICTED]
    # Home-router filtering everywhere but on the bare masquerade.
    for profile in rules.PROFILES:
        has_drop = 'iifname "wan1" ct state new drop' in text[profile]
        assert has_drop == (profile != rules.MASQUERADE)
    # Cone profiles forward inbound through the map; only address-restricted checks the source.
    assert "dnat ip to udp dport map @cone" in text[rules.FULL_CONE]
    assert "@contacted dnat" in text[rules.ADDRESS_RESTRICTED]
    assert "@contacted dnat" not in text[rules.FULL_CONE]
    assert "dnat ip to" not in text[rules.PORT_RESTRICTED]


def test_unknown_profile_and_bad_interface_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown NAT profile"):
        rules.nat_ruleset("carrier-grade", "wan1", "lan1")
    with pytest.raises(ValueError, match="bad interface name"):
        rules.nat_ruleset(rules.FULL_CONE, 'wan"; flush ruleset', "lan1")
    with pytest.raises(ValueError, match="bad interface name"):
        rules.loss_ruleset("a" * 16, 10)


def test_loss_and_block_rules() -> None:
    assert 'oifname "wan1" numgen random mod 100 < 25 drop' in rules.loss_ruleset("wan1", 25)
    with pytest.raises(ValueError):
        rules.loss_ruleset("wan1", 0)
    with pytest.raises(ValueError):
        rules.loss_ruleset("wan1", 101)
    assert rules.block_udp_ruleset().count("meta l4proto udp drop") == 3
    one_port = rules.block_udp_ruleset(41641)
    assert one_port.count("udp sport 41641 drop") == 3
    assert "meta l4proto" not in one_port
    with pytest.raises(ValueError):
        rules.block_udp_ruleset(0)


def test_coturn_config_is_stun_only_with_two_addresses() -> None:
    text = rules.coturn_config(["198.51.100.1", "198.51.100.2"], "/run/x")
    lines = text.splitlines()
    for needed in ("stun-only", "no-auth", "no-tls", "no-dtls", "no-cli",
                   "listening-ip=198.51.100.1", "listening-ip=198.51.100.2",
                   "listening-port=3478", "alt-listening-port=3479", "pidfile=/run/x/turnserver.pid"):
        assert needed in lines
    assert not any("rfc5780" in line for line in lines)
    with pytest.raises(ValueError):
        rules.coturn_config([], "/run/x")


def _response(attrs: bytes, txid: bytes = TXID) -> bytes:
    return struct.pack("!HHI12s", 0x0101, len(attrs), MAGIC_COOKIE, txid) + attrs


def _xor_v4(ip: bytes, port: int) -> bytes:
    xport = port ^ (MAGIC_COOKIE >> 16)
    xip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC_COOKIE), strict=True))
    return struct.pack("!HHBBH", 0x0020, 8, 0, 1, xport) + xip


def test_stun_request_and_coturn_shaped_response() -> None:
    assert binding_request(TXID) == bytes.fromhex("000100002112a442") + TXID
    other = struct.pack("!HHBBH4s", 0x802C, 8, 0, 1, 3479, bytes([198, 51, 100, 2]))
    reply = parse_binding_response(_response(_xor_v4(bytes([203, 0, 113, 10]), 40000) + other),
                                   TXID)
    assert reply.mapped == ("203.0.113.10", 40000)
    assert reply.other == ("198.51.100.2", 3479)


def test_stun_response_for_another_transaction_is_refused() -> None:
    data = _response(_xor_v4(bytes([203, 0, 113, 10]), 40000))
    with pytest.raises(StunParseError, match="transaction"):
        parse_binding_response(data, bytes(12))
    with pytest.raises(StunParseError, match="MAPPED"):
        parse_binding_response(_response(b""), TXID)


@settings(max_examples=500, deadline=200)
@given(st.binary(max_size=200) | st.binary(max_size=120).map(_response))
def test_stun_parser_returns_or_raises_parse_error(data: bytes) -> None:
    try:
        reply = parse_binding_response(data, TXID)
    except StunParseError:
        return
    assert isinstance(reply.mapped[1], int)
    assert 0 <= reply.mapped[1] < 65536


def test_meshctl_argv_honours_meshctl_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHCTL_BIN", raising=False)
    assert meshctl_argv() == [sys.executable, "-m", "meshctl"]
    monkeypatch.setenv("MESHCTL_BIN", "/opt/meshctl dist/meshctl --flag")
    assert meshctl_argv() == ["/opt/meshctl", "dist/meshctl", "--flag"]
    monkeypatch.setenv("MESHCTL_BIN", "'/opt/meshctl dist/meshctl'")
    assert meshctl_argv() == ["/opt/meshctl dist/meshctl"]


def test_names_carry_the_run_id_and_fit_in_ifnamsiz() -> None:
    lab = Lab(run_id="abc123")
    names = [lab.ifname("mesh-node-long-tag") for _ in range(200)]
    assert len(set(names)) == len(names)
    assert all(n.startswith("abc123") and len(n) <= 15 for n in names)
    assert Lab().run_id != Lab().run_id
    with pytest.raises(ValueError):
        Lab(prefix="")
    with pytest.raises(ValueError):
        Lab(prefix="../x")


def test_lab_refuses_to_build_outside_with() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root only to get as far as the check")
    lab = Lab()
    with pytest.raises(Exception, match="inside `with Lab"):
        lab.host("a")
