"""MagicDNS answers: query bytes + who asks + Zone -> what to send back (pure).

`answer()` decides, for one DNS message, whether to reply (A/AAAA/PTR, NXDOMAIN,
NODATA, FORMERR, NOTIMP, REFUSED), to forward it upstream, or to drop it. It never
raises: hostile bytes are dropped or answered FORMERR in time linear in their size.

Who asks (`asker_of`, from the source address) decides what they may have:
- the node itself (loopback, or one of its own mesh addresses or 100.100.100.100): mesh
  names, and other names forwarded to this node's upstream resolvers (often private ones:
  a home router, a corporate resolver, which other members have no business using);
- a member (a source in the mesh's prefixes): mesh names only; other names REFUSED;
- anyone else: nothing at all, not even a refusal (no reflection, nothing learnt).
The source address can be believed: WireGuard lets a peer send only from its own mesh
addresses, and the strong host model (firewall/ruleset.py) drops mesh sources arriving on
any other interface.

The wire parser here is our own, small and bounded (compression pointers may only
point backwards, a name is at most 255 bytes); it raises `DnsParseError` subclasses
and nothing else. dnslib builds the replies; its types never leave this package.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import dnslib

from meshctl.dns.zone import Zone
from meshctl.errors import ParseError

HEADER_LEN: Final = 12
MAX_QUERY_BYTES: Final = 4096  # real queries are < 600 bytes; anything larger is dropped
MAX_NAME_WIRE_LEN: Final = 255  # RFC 1035 3.1, length octets included
MAX_POINTER_HOPS: Final = 64  # a name has at most 127 labels; pointers only go backwards anyway
MIN_UDP_PAYLOAD: Final = 512  # without EDNS (RFC 1035 4.2.1)
ADVERTISED_UDP_PAYLOAD: Final = 1232  # what we offer in our OPT record (DNS flag day 2020)
MAX_TCP_MESSAGE: Final = 65535
MAX_CACHED_REPLIES: Final = 4096  # per zone; bounds memory under a random-name flood

OPCODE_QUERY: Final = 0
QTYPE_A: Final = 1
QTYPE_NS: Final = 2
QTYPE_SOA: Final = 6
QTYPE_PTR: Final = 12
QTYPE_AAAA: Final = 28
QTYPE_OPT: Final = 41
QTYPE_ANY: Final = 255
QCLASS_IN: Final = 1
QCLASS_ANY: Final = 255

RCODE_NOERROR: Final = 0
RCODE_FORMERR: Final = 1
RCODE_SERVFAIL: Final = 2
RCODE_NXDOMAIN: Final = 3
RCODE_NOTIMP: Final = 4
RCODE_REFUSED: Final = 5

_FLAG_QR: Final = 0x8000
_FLAG_TC: Final = 0x0200
_FLAG_RD: Final = 0x0100
_FLAG_AA: Final = 0x0400
_FLAG_RA: Final = 0x0080
_HEADER: Final = struct.Struct("!HHHHHH")
_RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength
# Our EDNS OPT record: root owner, type 41, class = UDP payload size, no options.
_OPT_RR: Final = b"\x00" + struct.pack("!HHIH", 41, ADVERTISED_UDP_PAYLOAD, 0, 0)
_IN_ADDR: Final = (b"in-addr", b"arpa")
_IP6: Final = (b"ip6", b"arpa")
_HEX: Final = frozenset(b"0123456789abcdef")


class DnsParseError(ParseError):
    """A DNS message could not be parsed."""


class TruncatedMessage(DnsParseError):
    """The message ends before a header, name or record does."""


class BadName(DnsParseError):
    """A name is too long, uses a reserved label type or a forward/looping pointer."""


class BadCounts(DnsParseError):
    """The section counts do not describe a single-question message."""


class BadEdns(DnsParseError):
    """More than one OPT record, or an OPT record not owned by the root."""


@dataclass(frozen=True, slots=True)
class Edns:
    udp_payload: int
    version: int


@dataclass(frozen=True, slots=True)
class Message:
    """The parts of a DNS message the resolver looks at."""

    id: int
    flags: int
    labels: tuple[bytes, ...]  # the question name as sent (case kept, for the echo)
    qtype: int
    qclass: int
    question_end: int  # offset just past the question section
    edns: Edns | None

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rd(self) -> bool:
        return bool(self.flags & _FLAG_RD)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & _FLAG_TC)

    @property
    def lower_labels(self) -> tuple[bytes, ...]:
        return tuple(label.lower() for label in self.labels)

    def udp_limit(self) -> int:
        """The largest UDP reply this client accepts."""
        if self.edns is None:
            return MIN_UDP_PAYLOAD
        return max(MIN_UDP_PAYLOAD, min(self.edns.udp_payload, ADVERTISED_UDP_PAYLOAD))


def _read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """Decode a (possibly compressed) name; return its labels and the offset after it."""
    labels: list[bytes] = []
    wire_len = 1  # the root label
    end: int | None = None
    pos = offset
    hops = 0
    while True:
        if pos >= len(data):
            raise TruncatedMessage("name runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise TruncatedMessage("compression pointer cut short")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            hops += 1
            # Strictly backwards: every hop moves left, so decoding always terminates.
            if target >= pos or hops > MAX_POINTER_HOPS:
                raise BadName("compression pointer does not point backwards")
            pos = target
            continue
        if kind != 0:
            raise BadName("reserved label type")
        if length == 0:
            return tuple(labels), (end if end is not None else pos + 1)
        start = pos + 1
        pos = start + length
        if pos > len(data):
            raise TruncatedMessage("label runs past the end of the message")
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE_LEN:
            raise BadName("name longer than 255 bytes")
        labels.append(data[start:pos])


def parse_message(data: bytes) -> Message:
    """Parse header, the single question and any EDNS OPT record.

    Raises a DnsParseError subclass (and nothing else) for malformed input.
    """
    data = bytes(data)
    if len(data) < HEADER_LEN:
        raise TruncatedMessage("shorter than a DNS header")
    msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        raise BadCounts(f"expected one question, got {qdcount}")
    labels, pos = _read_name(data, HEADER_LEN)
    if pos + 4 > len(data):
        raise TruncatedMessage("question cut short")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    question_end = pos
    edns: Edns | None = None
    for index in range(ancount + nscount + arcount):
        owner, pos = _read_name(data, pos)
        if pos + _RR_FIXED.size > len(data):
            raise TruncatedMessage("record header cut short")
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
        pos += _RR_FIXED.size + rdlength
        if pos > len(data):
            raise TruncatedMessage("record data cut short")
        if rtype == QTYPE_OPT and index >= ancount + nscount:
            if edns is not None or owner:
                raise BadEdns("second OPT record or OPT not owned by the root")
            edns = Edns(udp_payload=rclass, version=(ttl >> 16) & 0xFF)
    return Message(msg_id, flags, labels, qtype, qclass, question_end, edns)


class Asker(enum.Enum):
    """Who sent a query, as far as MagicDNS is concerned (module docstring)."""

    SELF = "self"
    MEMBER = "member"
    STRANGER = "stranger"


def asker_of(source: ipaddress.IPv4Address | ipaddress.IPv6Address, zone: Zone) -> Asker:
    if source.is_loopback or source in zone.own:
        return Asker.SELF
    if zone.is_mesh_address(source):
        return Asker.MEMBER
    return Asker.STRANGER


class Action(enum.Enum):
    REPLY = "reply"  # send Reply.data back to the client
    FORWARD = "forward"  # send the query to an upstream resolver
    DROP = "drop"  # send nothing


@dataclass(frozen=True, slots=True)
class Reply:
    action: Action
    data: bytes = b""
    rcode: int = RCODE_NOERROR
    reason: str = ""  # why it was dropped or refused (for debug logs and stats)


def answer(query: bytes, zone: Zone, *, asker: Asker, forward: bool = False, tcp: bool = False) -> Reply:
    """Decide what to do with one query from `asker`. Never raises.

    forward: an upstream is configured, so names outside the mesh are forwarded for the node
    itself (else, and for members, REFUSED). tcp: the query came over TCP, so no 512/EDNS
    size limit applies.
    """
    if asker is Asker.STRANGER:
        return Reply(Action.DROP, reason="not a member")
    forward = forward and asker is Asker.SELF
    query = bytes(query)  # a bytearray would leak into dnslib's name cache (unhashable)
    if len(query) < HEADER_LEN:
        return Reply(Action.DROP, reason="shorter than a DNS header")
    if len(query) > MAX_QUERY_BYTES:
        return Reply(Action.DROP, reason="oversized query")
    msg_id, flags = struct.unpack_from("!HH", query)
    if flags & _FLAG_QR:
        return Reply(Action.DROP, reason="a response, not a query")  # never answer answers
    if (flags >> 11) & 0xF != OPCODE_QUERY:
        return Reply(Action.REPLY, _header_only(msg_id, flags, RCODE_NOTIMP), RCODE_NOTIMP)
    try:
        msg = parse_message(query)
    except DnsParseError as exc:
        return Reply(Action.REPLY, _header_only(msg_id, flags, RCODE_FORMERR), RCODE_FORMERR, str(exc))
    key = (
        msg.lower_labels,
        msg.qtype,
        msg.qclass,
        forward,
        tcp,
        msg.edns is not None,
        msg.udp_limit(),
    )
    cache = zone.reply_cache
    hit = cache.get(key)
    if hit is not None:
        data, rcode = hit
        return Reply(Action.REPLY, _reuse(data, msg), rcode)
    reply = _decide(msg, zone, forward=forward, tcp=tcp)
    # Only positive answers are memoized: negative ones are cheap to build by hand, and
    # random names would only churn the cache.
    if reply.action is Action.REPLY and reply.rcode == RCODE_NOERROR:
        if len(cache) >= MAX_CACHED_REPLIES:  # a flood of random names: start over
            cache.clear()
        cache[key] = (reply.data, reply.rcode)
    return reply


def _reuse(cached: bytes, msg: Message) -> bytes:
    """A cached reply for the same question (case aside), with this query's ID, RD and case.

    The cached reply starts with the question name uncompressed at offset 12, and its
    records point back at it, so swapping in this query's spelling keeps them valid.
    """
    name = _encode_name(msg.labels)
    flags = (struct.unpack_from("!H", cached, 2)[0] & ~_FLAG_RD) | (msg.flags & _FLAG_RD)
    return struct.pack("!HH", msg.id, flags) + cached[4:HEADER_LEN] + name + cached[HEADER_LEN + len(name) :]


def error_reply(query: bytes, rcode: int) -> bytes | None:
    """A reply with `rcode` (SERVFAIL when upstreams fail, ...) echoing the question."""
    try:
        msg = parse_message(query)
    except DnsParseError:
        if len(query) < HEADER_LEN:
            return None
        msg_id, flags = struct.unpack_from("!HH", query)
        return _header_only(msg_id, flags, rcode)
    return _build(msg, rcode, [], [], authoritative=False, recursion=True, tcp=True)


def with_id(message: bytes, msg_id: int) -> bytes:
    """The same message with another transaction ID (for forwarding)."""
    return struct.pack("!H", msg_id) + message[2:]


def is_reply_to(sent: bytes, received: bytes) -> bool:
    """True when `received` is a response to `sent`: same ID, same question."""
    try:
        q = parse_message(sent)
        r = parse_message(received)
    except DnsParseError:
        return False
    return (
        r.is_response
        and r.id == q.id
        and r.lower_labels == q.lower_labels
        and (r.qtype, r.qclass) == (q.qtype, q.qclass)
    )


def is_truncation_of(sent: bytes, received: bytes) -> bool:
    """A TC response with our ID: some servers drop the question from it, so only the
    header is compared; the TCP retry that follows is checked in full."""
    if len(sent) < HEADER_LEN or len(received) < HEADER_LEN:
        return False
    msg_id, flags = struct.unpack_from("!HH", received)
    return bool(flags & _FLAG_QR) and bool(flags & _FLAG_TC) and sent[:2] == received[:2]


def is_truncated(message: bytes) -> bool:
    return len(message) >= 4 and bool(struct.unpack_from("!H", message, 2)[0] & _FLAG_TC)


def fit_udp(reply: bytes, query: bytes) -> bytes:
    """A forwarded `reply` if it fits the client's UDP buffer, else header + question, TC set."""
    try:
        q = parse_message(query)
    except DnsParseError:
        return reply
    # The client's own buffer size: the upstream already sized its reply to it.
    limit = MIN_UDP_PAYLOAD if q.edns is None else max(MIN_UDP_PAYLOAD, q.edns.udp_payload)
    if len(reply) <= limit:
        return reply
    try:
        r = parse_message(reply)
    except DnsParseError:
        return error_reply(query, RCODE_SERVFAIL) or b""
    head = struct.pack("!HHHHHH", r.id, r.flags | _FLAG_TC, 1, 0, 0, 0)
    return head + reply[HEADER_LEN : r.question_end]


# ---------------------------------------------------------------------------
# decisions


def _decide(msg: Message, zone: Zone, *, forward: bool, tcp: bool) -> Reply:
    labels = msg.lower_labels
    domain = tuple(zone.domain.encode("ascii").split(b"."))
    if labels[-len(domain) :] == domain:
        return _answer_forward_zone(msg, zone, labels[: -len(domain)], tcp=tcp, ra=forward)
    reverse = _reverse_address(labels)
    if reverse is not None and zone.is_mesh_address(reverse):
        return _answer_reverse(msg, zone, reverse, tcp=tcp, ra=forward)
    if forward:
        return Reply(Action.FORWARD, reason="outside the mesh domain")
    data = _build(msg, RCODE_REFUSED, [], [], authoritative=False, recursion=False, tcp=tcp)
    return Reply(Action.REPLY, data, RCODE_REFUSED, "outside the mesh domain")


def _answer_forward_zone(msg: Message, zone: Zone, rest: tuple[bytes, ...], *, tcp: bool, ra: bool) -> Reply:
    if msg.qclass not in (QCLASS_IN, QCLASS_ANY):
        data = _build(msg, RCODE_REFUSED, [], [], authoritative=False, recursion=ra, tcp=tcp)
        return Reply(Action.REPLY, data, RCODE_REFUSED, "class not IN")
    if not rest:  # the apex: SOA only
        if msg.qtype in (QTYPE_SOA, QTYPE_ANY):
            return _reply(msg, RCODE_NOERROR, [_soa_rr(zone, zone.domain)], [], tcp=tcp, ra=ra)
        return _negative(msg, zone, RCODE_NOERROR, zone.domain, ra=ra)
    addrs = zone.addresses(rest[0].decode("latin-1")) if len(rest) == 1 else None
    if addrs is None:
        return _negative(msg, zone, RCODE_NXDOMAIN, zone.domain, ra=ra)
    owner = dnslib.DNSLabel(msg.labels)
    records = []
    for addr in addrs:
        if addr.version == 4 and msg.qtype in (QTYPE_A, QTYPE_ANY):
            records.append(dnslib.RR(owner, QTYPE_A, ttl=zone.ttl, rdata=dnslib.A(str(addr))))
        elif addr.version == 6 and msg.qtype in (QTYPE_AAAA, QTYPE_ANY):
            records.append(dnslib.RR(owner, QTYPE_AAAA, ttl=zone.ttl, rdata=dnslib.AAAA(str(addr))))
    if not records:  # NODATA: the name exists, the type does not
        return _negative(msg, zone, RCODE_NOERROR, zone.domain, ra=ra)
    return _reply(msg, RCODE_NOERROR, records, [], tcp=tcp, ra=ra)


def _answer_reverse(
    msg: Message,
    zone: Zone,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    *,
    tcp: bool,
    ra: bool,
) -> Reply:
    v4_apex, v6_apex = zone.reverse_apexes
    apex = v4_apex if addr.version == 4 else v6_apex
    target = zone.ptr(addr.reverse_pointer.lower())
    if target is None:
        return _negative(msg, zone, RCODE_NXDOMAIN, apex, ra=ra)
    if msg.qtype not in (QTYPE_PTR, QTYPE_ANY) or msg.qclass not in (QCLASS_IN, QCLASS_ANY):
        return _negative(msg, zone, RCODE_NOERROR, apex, ra=ra)
    ptr = dnslib.RR(dnslib.DNSLabel(msg.labels), QTYPE_PTR, ttl=zone.ttl, rdata=dnslib.PTR(target + "."))
    return _reply(msg, RCODE_NOERROR, [ptr], [], tcp=tcp, ra=ra)


def _reverse_address(
    labels: tuple[bytes, ...],
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a full reverse name stands for, or None (partial names included)."""
    if len(labels) == 6 and labels[4:] == _IN_ADDR:
        octets = labels[3::-1]
        if not all(o.isdigit() and len(o) <= 3 for o in octets):
            return None
        try:
            return ipaddress.IPv4Address(b".".join(octets).decode("ascii"))
        except ValueError:  # "256", leading zeros
            return None
    if len(labels) == 34 and labels[32:] == _IP6:
        nibbles = labels[31::-1]
        if not all(len(n) == 1 and n[0] in _HEX for n in nibbles):
            return None
        return ipaddress.IPv6Address(int(b"".join(nibbles), 16))
    return None


# ---------------------------------------------------------------------------
# building replies (dnslib)


def _soa_rr(zone: Zone, owner: str) -> dnslib.RR:
    soa = zone.soa
    return dnslib.RR(
        owner + ".",
        QTYPE_SOA,
        ttl=soa.minimum,
        rdata=dnslib.SOA(
            soa.mname + ".",
            soa.rname + ".",
            (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum),
        ),
    )


def _reply(
    msg: Message,
    rcode: int,
    answers: Sequence[dnslib.RR],
    authority: Sequence[dnslib.RR],
    *,
    tcp: bool,
    ra: bool,
) -> Reply:
    return Reply(
        Action.REPLY,
        _build(msg, rcode, answers, authority, authoritative=True, recursion=ra, tcp=tcp),
        rcode,
    )


def _build(
    msg: Message,
    rcode: int,
    answers: Sequence[dnslib.RR],
    authority: Sequence[dnslib.RR],
    *,
    authoritative: bool,
    recursion: bool,
    tcp: bool,
) -> bytes:
    header = dnslib.DNSHeader(
        id=msg.id,
        qr=1,
        opcode=OPCODE_QUERY,
        aa=int(authoritative),
        rd=int(msg.rd),
        ra=int(recursion),
        rcode=rcode,
    )
    question = dnslib.DNSQuestion(dnslib.DNSLabel(msg.labels), msg.qtype, msg.qclass)
    record = dnslib.DNSRecord(header, q=question, rr=list(answers), auth=list(authority))
    if msg.edns is not None:
        record.add_ar(dnslib.EDNS0(udp_len=ADVERTISED_UDP_PAYLOAD))
    wire = bytes(record.pack())
    limit = MAX_TCP_MESSAGE if tcp else msg.udp_limit()
    if len(wire) > limit:  # answer what fits: header + question, TC set (RFC 2181 9)
        record.rr, record.auth = [], []
        record.header.tc = 1
        wire = bytes(record.pack())
    return wire


def _negative(msg: Message, zone: Zone, rcode: int, apex: str, *, ra: bool) -> Reply:
    """NXDOMAIN / NODATA with the zone's SOA in authority (RFC 2308), built by hand:
    every random name would otherwise cost a full dnslib build (a cheap flood)."""
    soa = zone.reply_cache.get(("soa", apex))
    if soa is None:
        soa = (_soa_wire(zone, apex), 0)
        zone.reply_cache[("soa", apex)] = soa
    flags = _FLAG_QR | _FLAG_AA | (msg.flags & _FLAG_RD) | (_FLAG_RA if ra else 0) | rcode
    arcount = 1 if msg.edns is not None else 0
    head = _HEADER.pack(msg.id, flags, 1, 0, 1, arcount)
    question = _encode_name(msg.labels) + struct.pack("!HH", msg.qtype, msg.qclass)
    opt = _OPT_RR if msg.edns is not None else b""
    # At most 12 + 259 + ~120 + 11 bytes: always within 512, no truncation needed.
    return Reply(Action.REPLY, head + question + soa[0] + opt, rcode)


def _encode_name(labels: Sequence[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def _soa_wire(zone: Zone, apex: str) -> bytes:
    """The SOA record with uncompressed names, so it can follow any question."""
    soa = zone.soa

    def name(text: str) -> bytes:
        return _encode_name([label.encode("ascii") for label in text.split(".") if label])

    rdata = name(soa.mname) + name(soa.rname)
    rdata += struct.pack("!IIIII", soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
    return name(apex) + _RR_FIXED.pack(QTYPE_SOA, QCLASS_IN, soa.minimum, len(rdata)) + rdata


def _header_only(msg_id: int, flags: int, rcode: int) -> bytes:
    """A reply with no sections: for messages whose question we could not read."""
    opcode_rd = flags & (0x7800 | _FLAG_RD)
    return _HEADER.pack(msg_id, _FLAG_QR | opcode_rd | rcode, 0, 0, 0, 0)
