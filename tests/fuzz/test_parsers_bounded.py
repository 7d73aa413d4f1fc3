"""Every parser that reads bytes from the network or the repository, held to one invariant.

For each parser: random bytes, mutations of a valid message (bit flips, overwrites,
insertions, deletions, truncations, splices) and the valid message grown by a large
insertion all end in a value or the parser's documented error class, never another
exception, within a time bound and (for the large inputs) a memory bound.

The per-area suites (tests/nat, tests/relay, tests/wg, tests/coord, tests/policy,
tests/dns) go deeper on each codec; this table makes sure none is left out and that
each is bounded on inputs far larger than a real packet or file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshctl.coord import delegation, endpoint_record, enrollment, records, signing, strictjson
from meshctl.coord.netmap import NetMap, NetworkSettings, Peer
from meshctl.dns.resolver import DnsParseError, parse_message
from meshctl.errors import ParseError, UsageError
from meshctl.keys import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic, SigningKey, VerifyKey
from meshctl.nat import disco, packet, stun
from meshctl.nat.addr import AddrPort
from meshctl.policy.check import check_policy
from meshctl.policy.hujson import HujsonError, parse_hujson
from meshctl.policy.parse import parse_policy
from meshctl.relay import channels
from meshctl.relay import wire as relay
from meshctl.wg.uapi import UapiParseError, parse_get_reply, parse_set_reply

PER_EXAMPLE_S = 1.0  # generous: a real parse of these sizes takes well under 10 ms
LARGE_INPUT_PEAK_BYTES = 16 * 1024 * 1024  # Python allocations while parsing one large input
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIGNER = SigningKey.generate()
AUTHKEY = SigningKey.generate()
NODE = NodePrivate.generate().public()
DISCO = DiscoPrivate.generate()
DISCO_SENDER = DiscoPrivate.generate()
NETWORK = "ab" * 16
TXID = bytes(range(12))
POLICY = (Path(__file__).parents[1] / "policy" / "sample_policy.hujson").read_text()
# The newer sections: grants (network ip), ipsets, autoApprovers, autogroup:internet, ssh (ignored).
GRANTS_POLICY = """{
  "groups": {"group:dev": ["dana@example.com"]},
  "tagOwners": {"tag:prod": [], "tag:router": []},
  "hosts": {"lan": "192.168.1.0/24", "nas": "192.168.1.10"},
  "ipsets": {"ipset:office": ["add lan", "remove nas", "add fd00::/64"], "ipset:all": ["ipset:office", "10.0.0.0/8"]},
  "grants": [
    {"src": ["group:dev"], "dst": ["tag:prod", "ipset:office"], "ip": ["tcp:443", "udp:53", "8000-8100", "icmp:*"]},
    {"src": ["autogroup:member"], "dst": ["autogroup:self", "autogroup:internet"], "ip": ["*"]},
  ],
  "acls": [{"action": "accept", "src": ["tag:prod"], "dst": ["ipset:all:22"], "proto": "tcp"}],
  "autoApprovers": {"routes": {"192.168.0.0/16": ["tag:router"], "ipset:all": ["group:dev"]},
                    "exitNode": ["tag:router"]},
  "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
  "tests": [{"src": "dana@example.com", "accept": ["tag:prod:443", "192.168.1.7:8080"], "deny": ["nas:443"]}],
}"""


@dataclass(frozen=True)
class Parser:
    name: str
    parse: Callable[[bytes], object]
    errors: tuple[type[Exception], ...]
    seeds: tuple[bytes, ...]

    def __repr__(self) -> str:  # test ids
        return self.name


def _text(parse: Callable[[str], object]) -> Callable[[bytes], object]:
    # The policy is read from the repository as UTF-8 (verify refuses anything else).
    return lambda data: parse(data.decode("utf-8", errors="replace"))


def _open_disco(data: bytes) -> object:
    box = disco.DiscoBox(DISCO, lambda n: bytes(n))
    return box.open(data, {DISCO_SENDER.public()})


def _relay_stream(data: bytes) -> object:
    frames = relay.FrameDecoder().feed(data)
    return [relay.parse_frame(f) for f in frames]


def _seed_records() -> tuple[bytes, bytes, bytes]:
    root = records.marshal_root(records.RootDoc(NETWORK, "acme", 1, 1_900_000_000, (SIGNER.public(),), 1,
                                                (SIGNER.public(),), 1))
    routes = (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("fd00:1::/64"))  # issue 19
    peer = records.marshal_peer(records.PeerRecord(NETWORK, "laptop", SIGNER.public(), NODE,
                                                   DISCO.public(), ("192.0.2.1:51820",), 1_700_000_000,
                                                   routes, True))
    state = records.marshal_state(records.StateDoc(
        NETWORK, 7, 1, 1_900_000_000, ipaddress.IPv4Network("100.64.0.0/10"),
        ipaddress.IPv6Network("fd7a:115c:a1e0::/48"), "acme.mesh", "0" * 64,
        {"laptop": records.Assignment("1" * 64, (ipaddress.IPv4Address("100.64.0.1"),), ("tag:x",), "ann",
                                      (*routes, ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
                                      expires=1_800_000_000)},
        (records.RelayEntry("r1", "relay.example:443"),), ("stun.example:3478",),
        authkeys={AUTHKEY.public().key_id(): records.AuthKey(
            AUTHKEY.public().key_id(), AUTHKEY.public(), ("tag:server",), ipaddress.IPv4Network("100.64.1.0/24"),
            1_900_000_000, reusable=True)}))
    return root, peer, state


def _check_netmap() -> NetMap:
    peers = []
    for i, (tags, owner) in enumerate([(("tag:prod",), ""), ((), "dana@example.com"), ((), ""), (("tag:router",), "")]):
        raw = bytes([i + 1]) * 32
        peers.append(Peer(f"n{i}", VerifyKey(raw), NodePublic(raw), DiscoPublic(raw),
                          (ipaddress.ip_address(f"100.64.0.{i + 1}"), ipaddress.ip_address(f"fd7a:115c:a1e0::{i + 1}")),
                          tags, owner, approved_routes=(ipaddress.ip_network("192.168.1.0/24"),) if i == 3 else ()))
    network = NetworkSettings("n", "n", ipaddress.IPv4Network("100.64.0.0/10"),
                              ipaddress.IPv6Network("fd7a:115c:a1e0::/48"), "n.mesh")
    return NetMap(network, 1, 2_000_000_000, "0" * 64, tuple(peers))


CHECK_NETMAP = _check_netmap()
ROOT, PEER, STATE = _seed_records()
ENDPOINT = endpoint_record.marshal_endpoint(endpoint_record.EndpointRecord(
    NETWORK, "laptop", 1_733_000_000_123, 1_733_000_000, ("203.0.113.7:51820", "[2001:db8::7]:51820"),
    DISCO.public(), NODE, agent=False))
SIG = signing.marshal_signatures([signing.sign(SIGNER, "state", NETWORK, STATE)])
ENROLLMENT = enrollment.Enrollment(
    NETWORK, AUTHKEY.public().key_id(), "laptop", hashlib.sha256(PEER).hexdigest(),
    (ipaddress.IPv4Address("100.64.1.9"), ipaddress.IPv6Address("fd7a:115c:a1e0::6440:109")), 1_733_000_000,
    ("tag:server",))
ENROLLMENT_DATA, ENROLLMENT_SIG = enrollment.sign_enrollment(ENROLLMENT, AUTHKEY, SIGNER)
PEER_SIG = signing.marshal_signatures([signing.sign(SIGNER, "peer", NETWORK, PEER)])
ENROLL_NETMAP = NetMap(NetworkSettings(NETWORK, "acme", ipaddress.IPv4Network("100.64.0.0/10"),
                                       ipaddress.IPv6Network("fd7a:115c:a1e0::/48"), "acme.mesh"),
                       1, 2_000_000_000, "0" * 64, (), authkeys=tuple(records.parse_state(STATE).authkeys.values()))


def _judge_enrollment(data: bytes) -> object:
    """A node judging a branch whose enrollment.json is `data` (its signature as it was): a verdict,
    never an exception."""
    candidate = delegation.Candidate("laptop", PEER, PEER_SIG, data, ENROLLMENT_SIG)
    return delegation.decide(ENROLL_NETMAP, {"laptop": candidate}, {}, {}, 1_733_000_100)
UAPI = (f"private_key={'11' * 32}\nlisten_port=51820\npublic_key={NODE.raw.hex()}\n"
        "endpoint=10.0.0.2:51820\nlast_handshake_time_sec=1\nallowed_ip=100.64.0.2/32\nerrno=0\n\n").encode()
UDP = packet.build_ipv4_udp(packet.UdpPacket(AddrPort(ipaddress.IPv4Address("192.0.2.1"), 51820),
                                             AddrPort(ipaddress.IPv4Address("192.0.2.2"), 3478),
                                             stun.marshal_binding_request(TXID)))

PARSERS = (
    Parser("stun-response", stun.parse_binding_response, (stun.StunError,),
           (stun.marshal_binding_response(TXID, AddrPort(ipaddress.ip_address("2001:db8::1"), 4242),
                                          software="coturn"),)),
    Parser("stun-request", stun.parse_binding_request, (stun.StunError,), (stun.marshal_binding_request(TXID),)),
    Parser("disco-message", disco.parse_message, (disco.DiscoError,),
           (disco.marshal_message(disco.Ping(TXID, NODE)),
            disco.marshal_message(disco.CallMeMaybe((AddrPort(ipaddress.ip_address("192.0.2.1"), 1),))))),
    Parser("disco-sealed", _open_disco, (disco.DiscoError,),
           (disco.DiscoBox(DISCO_SENDER, lambda n: bytes(n)).seal(
               disco.Ping(TXID, NODE), DISCO.public()),)),
    Parser("ipv4-udp", packet.parse_ipv4_udp, (packet.PacketError,), (UDP,)),
    Parser("relay-frame", relay.parse_frame, (relay.RelayParseError,),
           (relay.marshal_frame(relay.ClientHello(SIGNER.public(), NODE)),
            relay.marshal_frame(relay.SendPacket(bytes(8), NODE, b"wireguard bytes")))),
    Parser("relay-channel-frame", relay.parse_frame, (relay.RelayParseError,),
           (relay.marshal_frame(relay.ChannelRequest(bytes(8), NODE)),
            relay.marshal_frame(relay.ChannelInfo(NODE, 40001, bytes(16), channels.ChannelState.READY)))),
    Parser("relay-channel-bind", channels.parse_bind, (channels.BindParseError,), (channels.marshal_bind(bytes(16)),)),
    Parser("relay-stream", _relay_stream, (relay.RelayParseError,),
           (relay.marshal_frame(relay.Challenge(bytes(32), "r1")) + relay.marshal_frame(relay.Pong(bytes(8))),)),
    Parser("uapi-get", parse_get_reply, (UapiParseError,), (UAPI,)),
    Parser("uapi-set", parse_set_reply, (UapiParseError,), (b"errno=0\n\n", b"errno=-22\n\n")),
    Parser("strict-json", lambda d: strictjson.loads(d, name="f", max_bytes=1 << 20), (strictjson.JSONError,),
           (STATE,)),
    Parser("root", lambda d: records.parse_root(d, "root/1.root.json"), (ParseError,), (ROOT,)),
    Parser("peer", lambda d: records.parse_peer(d, "peers/laptop.json"), (ParseError,), (PEER,)),
    Parser("state", records.parse_state, (ParseError,), (STATE,)),
    Parser("endpoint", endpoint_record.parse_endpoint, (ParseError,), (ENDPOINT,)),
    Parser("enrollment", enrollment.parse_enrollment, (ParseError,), (ENROLLMENT_DATA,)),
    Parser("enrollment-judged", _judge_enrollment, (), (ENROLLMENT_DATA,)),
    Parser("authkey-text", _text(enrollment.parse_key_text), (UsageError,), (enrollment.key_text(AUTHKEY).encode(),)),
    Parser("signatures", lambda d: signing.parse_signatures(d, name="state.json.sig"), (ParseError,), (SIG,)),
    Parser("hujson", _text(parse_hujson), (HujsonError,), (POLICY.encode(),)),
    Parser("policy", _text(parse_policy), (ParseError,), (POLICY.encode(), GRANTS_POLICY.encode())),
    # parse, compile for the whole mesh and run the tests: every fault is a line, never an exception
    Parser("policy-check", _text(lambda t: check_policy(t, CHECK_NETMAP)), (), (POLICY.encode(),
                                                                               GRANTS_POLICY.encode())),
    Parser("dns-query", parse_message, (DnsParseError,),
           (dnslib.DNSRecord.question("laptop.acme.mesh", "AAAA").pack(),)),
)


@st.composite
def mutated(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0x22, 0x30, 0x5B, 0x7B, 0x7F, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":  # a copy of one part of the message elsewhere (repeated fields, lengths)
            start = draw(st.integers(0, max(0, len(data) - 1)))
            data[pos:pos] = data[start : start + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def grown(draw: st.DrawFn, seeds: tuple[bytes, ...]) -> bytes:
    """A valid message with one large run inserted: lengths, counts and buffers far past real sizes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    pos = draw(st.integers(0, len(data)))
    unit = draw(st.sampled_from([b"\x00", b"\xff", b"9", b"[", b"{\"a\":", b"a", b"\n", b"x=1\n", b"\xc0\x0c",
                                 data[pos : pos + 8] or b"\x01"]))
    size = draw(st.sampled_from([4 * 1024, 70 * 1024, 300 * 1024]))
    data[pos:pos] = (unit * (size // len(unit) + 1))[:size]
    return bytes(data)


def value_or_documented_error(parser: Parser, data: bytes) -> float:
    """Run one parse; return its duration. Anything but a value or the documented error fails.

    The bound is on this process's CPU time, not the wall clock: a quadratic parser still
    blows it, while other work on a shared machine (CI neighbours, parallel labs) does not.
    """
    began = time.process_time()
    try:
        parser.parse(data)
    except parser.errors:
        pass
    took = time.process_time() - began
    assert took < PER_EXAMPLE_S, f"{parser.name}: {took:.2f} s on {len(data)} bytes"
    return took


@pytest.mark.parametrize("parser", PARSERS, ids=repr)
def test_seeds_are_valid(parser: Parser) -> None:
    for seed in parser.seeds:
        parser.parse(seed)  # the mutations start from messages the parser accepts


@pytest.mark.parametrize("parser", PARSERS, ids=repr)
@FAST
@given(data=st.data())
def test_random_and_mutated_input(parser: Parser, data: st.DataObject) -> None:
    value_or_documented_error(parser, data.draw(st.one_of(st.binary(max_size=512), mutated(parser.seeds))))


@pytest.mark.parametrize("parser", PARSERS, ids=repr)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_large_input_is_bounded_in_time_and_memory(parser: Parser, data: st.DataObject) -> None:
    blob = data.draw(grown(parser.seeds))
    tracemalloc.start()
    try:
        value_or_documented_error(parser, blob)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < LARGE_INPUT_PEAK_BYTES + 8 * len(blob), f"{parser.name}: {peak} bytes for {len(blob)}"
