"""Admission on WireGuard's port (pure, injected time): per-source buckets, a shared one for
strangers, expectations from what we sent, bounded tables."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.nat import admission, packet
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.admission import Admission, Limits, key_of, source_key
from meshctl.ratelimit import BucketTable, TokenBucket

PEER = parse_addr_port("198.51.100.2:41641")
STUN_SERVER = parse_addr_port("203.0.113.10:3478")
ATTACKER = parse_addr_port("192.0.2.66:4444")
OURS = parse_addr_port("10.0.0.1:41641")


def _raw(src: AddrPort, payload: bytes = b"MC" + bytes(60)) -> bytes:
    return packet.build_ipv4_udp(packet.UdpPacket(src, OURS, payload))


def test_source_key_reads_the_sender_from_the_header() -> None:
    assert source_key(_raw(PEER)) == key_of(PEER) == PEER.ip.packed + (41641).to_bytes(2, "big")
    with_options = bytearray(_raw(ATTACKER))
    with_options = bytearray([0x46]) + with_options[1:20] + b"\x01\x01\x01\x00" + with_options[20:]
    assert source_key(bytes(with_options)) == key_of(ATTACKER)
    for short in (b"", b"\x45" + bytes(18), b"\x4f" + bytes(40), b"\x41" + bytes(40)):
        assert source_key(short) is None


@settings(max_examples=1000)
@given(st.binary(max_size=80))
def test_source_key_never_raises(data: bytes) -> None:
    key = source_key(data)
    assert key is None or len(key) == 6


def test_one_source_is_cut_to_its_rate_at_once() -> None:
    adm = Admission()
    adm.expect(PEER, 0.0)  # even a source we talk to: its forged copies cannot cost more
    took = sum(adm.admit(key_of(PEER), i / 20_000) for i in range(20_000))  # 20,000 packets in 1 s
    assert took <= admission.PER_SOURCE_BURST + admission.PER_SOURCE_RATE * 1.0
    assert adm.counts.refused_source == 20_000 - took
    # and it is not shut out: its bucket refills at its rate once it slows down
    assert adm.admit(key_of(PEER), 1.0 + 1.5 / admission.PER_SOURCE_RATE)


def test_a_flood_from_one_source_leaves_every_other_source_its_budget() -> None:
    adm = Admission()
    for i in range(10_000):
        adm.admit(key_of(ATTACKER), i / 10_000)
    assert adm.admit(key_of(PEER), 1.0)  # a stranger too: the flood was refused per source first
    adm.expect(STUN_SERVER, 1.0)
    assert all(adm.admit(key_of(STUN_SERVER), 1.0 + i / 100) for i in range(10))


def test_strangers_from_ever_new_sources_share_one_small_budget() -> None:
    """A flood with forged sources, each new: per-source buckets cannot stop it, the shared one does;
    a source we sent to is not a stranger and keeps its own budget."""
    adm = Admission()
    adm.expect(PEER, 0.0)
    took = 0
    peer_took = 0
    for i in range(50_000):  # one second
        now = i / 50_000
        src = AddrPort(ipaddress.IPv4Address(0x0A000000 + i), 1000 + i % 50_000)
        took += adm.admit(key_of(src), now)
        if i % 2000 == 0:  # 25 packets in the second: within its own budget
            peer_took += adm.admit(key_of(PEER), now)
    assert took <= admission.STRANGER_BURST + admission.STRANGER_RATE * 1.0
    assert adm.counts.refused_stranger >= 50_000 - took - admission.MAX_SOURCES
    assert peer_took == 25, "the expected source lost packets to the strangers' flood"
    assert len(adm._sources) <= admission.MAX_SOURCES


def test_an_expectation_lasts_expect_for_s() -> None:
    limits = Limits(stranger_rate=1.0, stranger_burst=1.0)
    adm = Admission(limits)
    adm.expect(PEER, 0.0)
    assert adm.is_expected(key_of(PEER), admission.EXPECT_FOR_S - 0.1)
    assert not adm.is_expected(key_of(PEER), admission.EXPECT_FOR_S + 0.1)
    assert not adm.is_expected(key_of(ATTACKER), 1.0)
    adm.expect(PEER, 100.0)  # every send renews it
    assert adm.is_expected(key_of(PEER), 100.0 + admission.EXPECT_FOR_S - 0.1)


def test_expectations_are_bounded() -> None:
    adm = Admission(Limits(max_expected=8))
    for i in range(100):
        adm.expect(AddrPort(ipaddress.IPv4Address(0x0A000000 + i), 9), float(i))
    assert len(adm._expected) == 8
    assert adm.is_expected(key_of(AddrPort(ipaddress.IPv4Address(0x0A000000 + 99), 9)), 99.0)
    assert not adm.is_expected(key_of(AddrPort(ipaddress.IPv4Address(0x0A000000), 9)), 99.0)


def test_an_unreadable_packet_is_refused() -> None:
    assert not Admission().admit(None, 0.0)


# --- the limiter itself (meshctl/ratelimit.py) --------------------------------------------------


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket.full(10.0, 5.0, 0.0)
    assert sum(bucket.take(1, 0.0) for _ in range(20)) == 5
    assert not bucket.take(1, 0.05)
    assert bucket.take(1, 0.1)
    assert sum(bucket.take(1, 100.0) for _ in range(20)) == 5  # never above the burst
    assert not bucket.take(1, 50.0)  # a clock going back adds nothing


def test_bucket_table_keeps_at_most_max_entries_and_forgets_the_least_recent() -> None:
    table: BucketTable[str] = BucketTable(1.0, 2.0, max_entries=3)
    for key in "abc":
        assert table.take(key, 0.0)
    assert table.take("a", 0.0)  # a is the most recent now
    assert table.take("d", 0.0)  # b goes
    assert len(table) == 3 and "b" not in table and "a" in table
    assert not table.take("a", 0.0)  # a kept its (empty) bucket
    table.forget("a")
    assert table.take("a", 0.0)


def test_bucket_table_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        BucketTable(0.0, 1.0, 1)
    with pytest.raises(ValueError):
        BucketTable(1.0, 1.0, 0)
