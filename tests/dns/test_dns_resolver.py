"""resolver.answer(): every decision, every malformed input (pure, dnslib only to read replies)."""

from __future__ import annotations

import ipaddress
import struct

import dnslib
import pytest
from dnssupport import PEERS, make_netmap, make_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshctl.coord.netmap import NetMap
from meshctl.dns import resolver
from meshctl.dns.resolver import (
    Action,
    Asker,
    BadCounts,
    BadEdns,
    BadName,
    DnsParseError,
    TruncatedMessage,
    parse_message,
)
from meshctl.dns.zone import Zone, zone_from_netmap


def answer(query: bytes, zone: Zone, *, asker: Asker = Asker.SELF, **kw: bool) -> resolver.Reply:
    """resolver.answer, asked by the node itself unless a test says otherwise."""
    return resolver.answer(query, zone, asker=asker, **kw)


def q(name: str, qtype: str = "A", *, rd: bool = True, edns: bool = False, qid: int = 4242) -> bytes:
    rec = dnslib.DNSRecord.question(name, qtype)
    rec.header.id = qid
    rec.header.rd = int(rd)
    if edns:
        rec.add_ar(dnslib.EDNS0(udp_len=4096))
    return bytes(rec.pack())


def reply_of(query: bytes, zone: Zone, **kw: bool) -> dnslib.DNSRecord:
    r = answer(query, zone, **kw)
    assert r.action is Action.REPLY, r
    return dnslib.DNSRecord.parse(r.data)


def rdatas(rec: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in rec.rr]


# -- names inside the mesh domain ------------------------------------------------------


def test_a_record(zone: Zone) -> None:
    rec = reply_of(q("desktop.example.mesh"), zone)
    assert rec.header.rcode == dnslib.RCODE.NOERROR and rec.header.aa == 1
    assert rdatas(rec) == ["100.64.0.1"]
    assert rec.rr[0].ttl == zone.ttl and rec.header.id == 4242


def test_aaaa_record(zone: Zone) -> None:
    rec = reply_of(q("laptop.example.mesh", "AAAA"), zone)
    assert rdatas(rec) == ["fd7a:115c:a1e0::2"]


def test_any_returns_both_families(zone: Zone) -> None:
    rec = reply_of(q("desktop.example.mesh", "ANY"), zone)
    assert sorted(rdatas(rec)) == ["100.64.0.1", "fd7a:115c:a1e0::1"]


def test_case_insensitive_and_question_case_echoed(zone: Zone) -> None:
    # The first spelling fills the reply cache; the second must still see its own case.
    for name in ("DeskTop.Example.MESH", "desktop.EXAMPLE.mesh"):
        rec = reply_of(q(name), zone)
        assert str(rec.q.qname) == name + "."
        assert str(rec.rr[0].rname) == name + "."
        assert rdatas(rec) == ["100.64.0.1"]


def test_cached_reply_carries_this_querys_id_and_rd(zone: Zone) -> None:
    reply_of(q("desktop.example.mesh", qid=1, rd=True), zone)
    rec = reply_of(q("desktop.example.mesh", qid=2, rd=False), zone)
    assert rec.header.id == 2 and rec.header.rd == 0


def test_nxdomain_has_soa_in_authority(zone: Zone) -> None:
    rec = reply_of(q("nosuch.example.mesh"), zone)
    assert rec.header.rcode == dnslib.RCODE.NXDOMAIN
    assert not rec.rr
    assert rec.auth[0].rtype == dnslib.QTYPE.SOA
    assert str(rec.auth[0].rname) == "example.mesh."
    assert rec.auth[0].rdata.times[0] == zone.serial


def test_below_a_host_is_nxdomain(zone: Zone) -> None:
    assert reply_of(q("x.desktop.example.mesh"), zone).header.rcode == dnslib.RCODE.NXDOMAIN


def test_nodata_when_name_exists_but_type_does_not(zone: Zone) -> None:
    rec = reply_of(q("v4only.example.mesh", "AAAA"), zone)
    assert rec.header.rcode == dnslib.RCODE.NOERROR
    assert not rec.rr and rec.auth[0].rtype == dnslib.QTYPE.SOA
    rec = reply_of(q("desktop.example.mesh", "MX"), zone)
    assert rec.header.rcode == dnslib.RCODE.NOERROR and not rec.rr


def test_apex_has_soa_only(zone: Zone) -> None:
    rec = reply_of(q("example.mesh", "SOA"), zone)
    assert rec.rr[0].rtype == dnslib.QTYPE.SOA
    rec = reply_of(q("example.mesh", "A"), zone)
    assert rec.header.rcode == dnslib.RCODE.NOERROR and not rec.rr and rec.auth


def test_non_in_class_inside_domain_is_refused(zone: Zone) -> None:
    rec = dnslib.DNSRecord.question("desktop.example.mesh", "A", "CH")
    out = reply_of(bytes(rec.pack()), zone)
    assert out.header.rcode == dnslib.RCODE.REFUSED


# -- reverse lookups ---------------------------------------------------------------------


def test_ptr_ipv4(zone: Zone) -> None:
    rec = reply_of(q("1.0.64.100.in-addr.arpa", "PTR"), zone)
    assert rdatas(rec) == ["desktop.example.mesh."]


def test_ptr_ipv6(zone: Zone) -> None:
    name = ipaddress.ip_address("fd7a:115c:a1e0::2").reverse_pointer
    assert rdatas(reply_of(q(name.upper(), "PTR"), zone)) == ["laptop.example.mesh."]


def test_ptr_unknown_mesh_address_is_nxdomain_with_reverse_soa(zone: Zone) -> None:
    rec = reply_of(q("99.0.64.100.in-addr.arpa", "PTR"), zone)
    assert rec.header.rcode == dnslib.RCODE.NXDOMAIN
    assert str(rec.auth[0].rname) == "100.in-addr.arpa."


def test_ptr_outside_mesh_is_forwarded_or_refused(zone: Zone) -> None:
    query = q("1.1.168.192.in-addr.arpa", "PTR")
    assert answer(query, zone, forward=True).action is Action.FORWARD
    assert reply_of(query, zone).header.rcode == dnslib.RCODE.REFUSED


@pytest.mark.parametrize("name", ["0.64.100.in-addr.arpa", "01.0.64.100.in-addr.arpa", "x.0.64.100.in-addr.arpa"])
def test_partial_or_odd_reverse_names_are_not_ours(zone: Zone, name: str) -> None:
    assert answer(q(name, "PTR"), zone, forward=True).action is Action.FORWARD


# -- outside the mesh ---------------------------------------------------------------------


def test_outside_domain_refused_without_upstream(zone: Zone) -> None:
    rec = reply_of(q("example.com"), zone)
    assert rec.header.rcode == dnslib.RCODE.REFUSED and rec.header.ra == 0


def test_outside_domain_forwarded_with_upstream(zone: Zone) -> None:
    assert answer(q("example.com"), zone, forward=True).action is Action.FORWARD
    # a name that merely ends with the domain's text is not inside it
    assert answer(q("notexample.mesh"), zone, forward=True).action is Action.FORWARD


def test_ra_bit_reflects_forwarding(zone: Zone) -> None:
    assert reply_of(q("desktop.example.mesh"), zone, forward=True).header.ra == 1
    assert reply_of(q("desktop.example.mesh"), zone, forward=False).header.ra == 0


# -- who asks (issue 23, issue 16 item 5) ----------------------------------------------------


@pytest.mark.parametrize(("source", "who"), [
    ("127.0.0.1", Asker.SELF), ("127.3.3.3", Asker.SELF), ("::1", Asker.SELF),
    ("100.64.0.1", Asker.SELF), ("fd7a:115c:a1e0::1", Asker.SELF), ("100.100.100.100", Asker.SELF),
    ("100.64.0.2", Asker.MEMBER), ("fd7a:115c:a1e0::2", Asker.MEMBER), ("100.127.255.254", Asker.MEMBER),
    ("192.168.1.20", Asker.STRANGER), ("100.128.0.1", Asker.STRANGER), ("fe80::1", Asker.STRANGER),
    ("fd7a:115c:a1e1::2", Asker.STRANGER), ("0.0.0.0", Asker.STRANGER), ("::ffff:100.64.0.2", Asker.STRANGER),
])
def test_who_asks_is_told_by_the_source_address(netmap: NetMap, source: str, who: Asker) -> None:
    """The node itself: loopback and its own addresses (desktop's, and MagicDNS's); a member: the
    rest of the mesh's prefixes; anyone else is a stranger."""
    zone = zone_from_netmap(netmap.with_self("desktop"))
    assert resolver.asker_of(ipaddress.ip_address(source), zone) is who


def test_members_get_mesh_names_but_nothing_forwarded(zone: Zone) -> None:
    for name, qtype in (("desktop.example.mesh", "A"), ("laptop.example.mesh", "AAAA"),
                        ("2.0.64.100.in-addr.arpa", "PTR")):
        rec = reply_of(q(name, qtype), zone, asker=Asker.MEMBER, forward=True)
        assert rec.header.rcode == dnslib.RCODE.NOERROR and rec.rr, name
        assert rec.header.ra == 0, "a member is not offered recursion"
    for name, qtype in (("example.com", "A"), ("1.1.168.192.in-addr.arpa", "PTR"), ("notexample.mesh", "A")):
        rec = reply_of(q(name, qtype), zone, asker=Asker.MEMBER, forward=True)
        assert rec.header.rcode == dnslib.RCODE.REFUSED, name
    assert reply_of(q("nosuch.example.mesh"), zone, asker=Asker.MEMBER).header.rcode == dnslib.RCODE.NXDOMAIN


def test_strangers_get_no_answer_at_all(zone: Zone) -> None:
    for data in (q("desktop.example.mesh"), q("example.com"), q("2.0.64.100.in-addr.arpa", "PTR"), b"\x00" * 3):
        for forward in (False, True):
            for tcp in (False, True):
                reply = answer(data, zone, asker=Asker.STRANGER, forward=forward, tcp=tcp)
                assert reply.action is Action.DROP and not reply.data


def test_a_cached_reply_for_the_node_itself_is_not_served_to_a_member(zone: Zone) -> None:
    """Replies are memoized per question: the recursion-available bit must follow the asker."""
    assert reply_of(q("desktop.example.mesh"), zone, forward=True).header.ra == 1
    assert reply_of(q("desktop.example.mesh"), zone, asker=Asker.MEMBER, forward=True).header.ra == 0


def test_new_zone_answers_immediately() -> None:
    old = zone_from_netmap(make_netmap(PEERS))
    new = zone_from_netmap(make_netmap([make_peer("renamed", "100.64.0.1")]))
    assert reply_of(q("desktop.example.mesh"), old).header.rcode == dnslib.RCODE.NOERROR
    assert reply_of(q("desktop.example.mesh"), new).header.rcode == dnslib.RCODE.NXDOMAIN
    assert rdatas(reply_of(q("renamed.example.mesh"), new)) == ["100.64.0.1"]


# -- EDNS and size ---------------------------------------------------------------------


def test_edns_query_gets_opt_back(zone: Zone) -> None:
    rec = reply_of(q("desktop.example.mesh", edns=True), zone)
    opts = [rr for rr in rec.ar if rr.rtype == dnslib.QTYPE.OPT]
    assert len(opts) == 1 and opts[0].rclass == resolver.ADVERTISED_UDP_PAYLOAD


def test_two_opt_records_are_formerr(zone: Zone) -> None:
    rec = dnslib.DNSRecord.question("desktop.example.mesh")
    rec.add_ar(dnslib.EDNS0(udp_len=1232))
    rec.add_ar(dnslib.EDNS0(udp_len=1232))
    assert reply_of(bytes(rec.pack()), zone).header.rcode == dnslib.RCODE.FORMERR


def _big_zone() -> Zone:
    addrs = [f"100.64.1.{i}" for i in range(1, 60)]
    return zone_from_netmap(make_netmap([make_peer("many", *addrs)]))


def test_udp_reply_over_512_is_truncated_tcp_is_not() -> None:
    zone = _big_zone()
    udp = answer(q("many.example.mesh"), zone)
    rec = dnslib.DNSRecord.parse(udp.data)
    assert len(udp.data) <= 512 and rec.header.tc == 1 and not rec.rr
    tcp = dnslib.DNSRecord.parse(answer(q("many.example.mesh"), zone, tcp=True).data)
    assert tcp.header.tc == 0 and len(tcp.rr) == 59
    big = dnslib.DNSRecord.parse(answer(q("many.example.mesh", edns=True), zone).data)
    assert big.header.tc == 0 and len(big.rr) == 59  # 59 * 16 + header < 1232


# -- malformed input ----------------------------------------------------------------------


def test_short_messages_are_dropped(zone: Zone) -> None:
    for n in range(12):
        assert answer(b"\x00" * n, zone).action is Action.DROP


def test_responses_are_never_answered(zone: Zone) -> None:
    data = bytearray(q("desktop.example.mesh"))
    data[2] |= 0x80
    assert answer(bytes(data), zone).action is Action.DROP


def test_oversized_query_is_dropped(zone: Zone) -> None:
    data = q("desktop.example.mesh") + b"\x00" * resolver.MAX_QUERY_BYTES
    assert answer(data, zone).action is Action.DROP


def test_other_opcodes_get_notimp(zone: Zone) -> None:
    data = bytearray(q("desktop.example.mesh"))
    data[2] = (data[2] & 0x87) | (4 << 3)  # NOTIFY
    rec = reply_of(bytes(data), zone)
    assert rec.header.rcode == dnslib.RCODE.NOTIMP and rec.header.id == 4242


@pytest.mark.parametrize("qdcount", [0, 2])
def test_question_count_other_than_one_is_formerr(zone: Zone, qdcount: int) -> None:
    data = bytearray(q("desktop.example.mesh"))
    data[4:6] = struct.pack("!H", qdcount)
    r = answer(bytes(data), zone)
    assert r.rcode == resolver.RCODE_FORMERR
    hdr = struct.unpack("!HHHHHH", r.data)
    assert hdr[0] == 4242 and hdr[1] & 0x8000 and hdr[2:] == (0, 0, 0, 0)


def test_every_prefix_of_a_query_is_truncated() -> None:
    data = q("desktop.example.mesh")
    for cut in range(len(data)):
        with pytest.raises(TruncatedMessage):
            parse_message(data[:cut])
    assert parse_message(data).qtype == 1
    assert parse_message(data + b"trailing").qtype == 1  # trailing bytes are ignored


def test_name_errors() -> None:
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    with pytest.raises(BadName):  # pointer to itself
        parse_message(header + b"\xc0\x0c\x00\x01\x00\x01")
    with pytest.raises(BadName):  # pointer forward
        parse_message(header + b"\xc0\x20" + b"\x00" * 40)
    with pytest.raises(BadName):  # reserved label type 0x40
        parse_message(header + b"\x41a\x00\x00\x01\x00\x01")
    with pytest.raises(BadName):  # longer than 255 bytes
        parse_message(header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01")
    with pytest.raises(BadCounts):
        parse_message(struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0))


def test_opt_owned_by_non_root_is_bad_edns() -> None:
    data = bytearray(q("desktop.example.mesh"))
    data[10:12] = b"\x00\x01"
    data += b"\x01x\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    with pytest.raises(BadEdns):
        parse_message(bytes(data))


def test_long_backward_pointer_chain_is_bounded(zone: Zone) -> None:
    """Each record's owner points at the previous owner (itself a pointer): a chain that
    would take quadratic time is cut at MAX_POINTER_HOPS and answered FORMERR."""
    count = 300
    header = struct.pack("!HHHHHH", 7, 0, 1, 0, 0, count)
    question = b"\x00" + struct.pack("!HH", 1, 1)
    fixed = struct.pack("!HHIH", 1, 1, 0, 0)
    body = bytearray(header + question)
    previous = len(body)
    body += b"\x01a\x00" + fixed
    for _ in range(count - 1):
        here = len(body)
        body += struct.pack("!H", 0xC000 | previous) + fixed
        previous = here
    assert len(body) < resolver.MAX_QUERY_BYTES
    with pytest.raises(BadName):
        parse_message(bytes(body))
    r = answer(bytes(body), zone)
    assert r.action is Action.REPLY and r.rcode == resolver.RCODE_FORMERR


# -- helpers for forwarding -----------------------------------------------------------------


def test_with_id_and_is_reply_to() -> None:
    sent = q("example.com", qid=100)
    up = dnslib.DNSRecord.parse(sent).reply()
    reply = bytes(up.pack())
    assert resolver.is_reply_to(sent, reply)
    assert not resolver.is_reply_to(sent, resolver.with_id(reply, 101))
    assert not resolver.is_reply_to(q("example.org", qid=100), reply)
    assert not resolver.is_reply_to(sent, sent)  # a query is not a reply
    assert struct.unpack_from("!H", resolver.with_id(reply, 7))[0] == 7


def test_fit_udp_truncates_large_upstream_reply() -> None:
    query = q("big.example.com", "TXT")
    up = dnslib.DNSRecord.parse(query).reply()
    for i in range(40):
        up.add_answer(dnslib.RR("big.example.com", dnslib.QTYPE.TXT, rdata=dnslib.TXT("x" * 30 + str(i))))
    big = bytes(up.pack())
    assert len(big) > 512
    small = resolver.fit_udp(big, query)
    rec = dnslib.DNSRecord.parse(small)
    assert rec.header.tc == 1 and not rec.rr and str(rec.q.qname) == "big.example.com."
    # a client that offers a 4096-byte EDNS buffer gets it untouched
    assert resolver.fit_udp(big, q("big.example.com", "TXT", edns=True)) == big


def test_error_reply_echoes_question() -> None:
    data = resolver.error_reply(q("example.com", qid=9), resolver.RCODE_SERVFAIL)
    assert data is not None
    rec = dnslib.DNSRecord.parse(data)
    assert rec.header.rcode == dnslib.RCODE.SERVFAIL and rec.header.id == 9
    assert str(rec.q.qname) == "example.com."
    assert resolver.error_reply(b"\x01", resolver.RCODE_SERVFAIL) is None


# -- fuzz ----------------------------------------------------------------------------------

FUZZ_ZONE = zone_from_netmap(make_netmap(PEERS))
SEEDS = [
    q("desktop.example.mesh"),
    q("laptop.example.mesh", "AAAA", edns=True),
    q("1.0.64.100.in-addr.arpa", "PTR"),
    q("nosuch.example.mesh"),
    q("example.com"),
]


def _check_reply(query: bytes, r: resolver.Reply) -> None:
    assert r.action in (Action.REPLY, Action.FORWARD, Action.DROP)
    if len(query) < 12:
        assert r.action is Action.DROP
    if r.action is Action.REPLY:
        assert len(r.data) >= 12
        msg_id, flags = struct.unpack_from("!HH", r.data)
        assert msg_id == struct.unpack_from("!H", query)[0]
        assert flags & 0x8000  # QR
        assert len(r.data) <= resolver.ADVERTISED_UDP_PAYLOAD
        if r.rcode not in (resolver.RCODE_FORMERR, resolver.RCODE_NOTIMP):
            sent = parse_message(r.data)  # what we send is well formed and answers the query
            assert sent.is_response and sent.lower_labels == parse_message(query).lower_labels


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_reply(data, answer(data, FUZZ_ZONE, forward=True))
    _check_reply(data, answer(data, FUZZ_ZONE, tcp=True))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans(), st.booleans())
def test_fuzz_mutated_queries(data: bytes, forward: bool, tcp: bool) -> None:
    _check_reply(data, answer(data, FUZZ_ZONE, forward=forward, tcp=tcp))


@settings(max_examples=1000)
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_fuzz_parser_raises_only_parse_errors(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except DnsParseError:
        return
    assert len(msg.labels) <= 127 and msg.question_end <= len(data)


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=300), mutated()), st.one_of(st.binary(max_size=300), mutated()))
def test_fuzz_forwarding_helpers_never_raise(a: bytes, b: bytes) -> None:
    resolver.is_reply_to(a, b)
    resolver.fit_udp(a, b)
    resolver.error_reply(a, resolver.RCODE_SERVFAIL)
    resolver.is_truncated(a)


def test_negative_answers_carry_opt_and_ra(zone: Zone) -> None:
    for name, rcode in (("nosuch.example.mesh", dnslib.RCODE.NXDOMAIN), ("v4only.example.mesh", dnslib.RCODE.NOERROR)):
        rec = reply_of(q(name, "AAAA", edns=True), zone, forward=True)
        assert rec.header.rcode == rcode and rec.header.ra == 1 and rec.header.aa == 1
        assert [rr.rtype for rr in rec.ar] == [dnslib.QTYPE.OPT]
        assert rec.auth[0].rdata.mname == "example.mesh." and rec.auth[0].ttl == zone.ttl
