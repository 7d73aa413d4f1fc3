"""The endpoint record codec (coord/endpoint_record.py): strict, canonical, bounded."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.coord.endpoint_record import (
    MAX_CANDIDATES,
    MAX_ENDPOINT_BYTES,
    EndpointRecord,
    canonical_candidate,
    marshal_endpoint,
    next_counter,
    parse_endpoint,
)
from meshctl.errors import ParseError
from meshctl.keys import DiscoPrivate, NodePrivate

NETWORK = "ab" * 16
DISCO = DiscoPrivate.generate().public()
WG = NodePrivate.generate().public()


def record(**kw: object) -> EndpointRecord:
    fields: dict[str, object] = {"network_id": NETWORK, "name": "laptop", "counter": 1_733_000_000_123,
                                 "timestamp": 1_733_000_000, "candidates": ("203.0.113.7:51820", "10.0.0.2:51820"),
                                 "disco_key": DISCO, "wg_public_key": WG}
    fields.update(kw)
    return EndpointRecord(**fields)  # type: ignore[arg-type]


def doc(**kw: object) -> bytes:
    base = json.loads(marshal_endpoint(record()))
    base.update(kw)
    return json.dumps(base).encode()


def test_round_trip_is_exact() -> None:
    rec = record()
    data = marshal_endpoint(rec)
    assert parse_endpoint(data) == rec
    assert marshal_endpoint(parse_endpoint(data)) == data
    assert b'"agent"' not in data  # the agent's records look exactly like ROUND2.md's


def test_cron_record_says_no_agent() -> None:
    rec = record(agent=False)
    data = marshal_endpoint(rec)
    assert json.loads(data)["agent"] is False
    assert parse_endpoint(data).agent is False


@pytest.mark.parametrize("field", ["addresses", "tags", "routes", "owner", "advertise_routes", "peers"])
def test_a_record_that_tries_to_say_more_is_refused(field: str) -> None:
    with pytest.raises(ParseError, match=f"unknown field {field}"):
        parse_endpoint(doc(**{field: ["100.64.0.9"]}))


@pytest.mark.parametrize(("value", "why"), [
    ("host.example:51820", "octets"),  # host names would make nodes resolve what a record says
    ("203.0.113.7:0", "port"),
    ("203.0.113.7:65536", "port"),
    ("203.0.113.7:051820", "port"),
    ("203.000.113.7:51820", "Leading zeros"),
    ("[2001:DB8::1]:51820", "canonical"),
    ("[2001:db8:0:0::1]:51820", "canonical"),
    ("2001:db8::1:51820", "octets"),
    ("0.0.0.0:51820", "unicast"),
    ("224.0.0.1:51820", "unicast"),
    ("127.0.0.1:22", "unicast"),  # probes of other nodes to their own host
    ("[::1]:22", "unicast"),
    ("[::ffff:1.2.3.4]:51820", "plain"),
])
def test_candidates_are_literal_and_canonical(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        canonical_candidate(value)
    with pytest.raises(ParseError, match="field candidates"):
        parse_endpoint(doc(candidates=[value]))


def test_ipv6_candidate_is_accepted_in_canonical_form() -> None:
    assert canonical_candidate("[2001:db8::1]:51820") == "[2001:db8::1]:51820"


@pytest.mark.parametrize(("kw", "field"), [
    ({"candidates": ["10.0.0.1:1"] * 2}, "candidates"),
    ({"candidates": [f"10.0.0.{i}:1" for i in range(MAX_CANDIDATES + 1)]}, "candidates"),
    ({"counter": -1}, "counter"),
    ({"counter": True}, "counter"),
    ({"agent": 0}, "agent"),
    ({"timestamp": "2024-13-01T00:00:00Z"}, "timestamp"),
    ({"type": "meshctl-peer"}, "type"),
    ({"name": "Laptop"}, "name"),
    ({"disco_key": "AAAA"}, "disco_key"),
    ({"wg_public_key": WG.b64() + "="}, "wg_public_key"),
])
def test_bad_fields_are_named(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ParseError, match=f"field {field}"):
        parse_endpoint(doc(**kw))


def test_floats_are_refused() -> None:
    with pytest.raises(ParseError, match="floating-point"):
        parse_endpoint(doc(counter=1.5))


def test_missing_field_is_named() -> None:
    base = json.loads(marshal_endpoint(record()))
    del base["counter"]
    with pytest.raises(ParseError, match="missing field counter"):
        parse_endpoint(json.dumps(base).encode())


def test_size_is_bounded_before_parsing() -> None:
    big = doc(candidates=[]) + b" " * MAX_ENDPOINT_BYTES
    with pytest.raises(ParseError):
        parse_endpoint(big)


def test_counter_strictly_increases_even_when_the_clock_goes_back() -> None:
    assert next_counter(1000, None) == 1000
    assert next_counter(1000, 999) == 1000
    assert next_counter(1000, 1000) == 1001
    assert next_counter(5, 1000) == 1001


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 254), st.integers(0, 255), st.integers(1, 65535)), max_size=MAX_CANDIDATES,
                unique=True),
       st.integers(0, 2**63 - 1), st.booleans())
def test_any_valid_record_round_trips(cands: list[tuple[int, int, int]], counter: int, agent: bool) -> None:
    rec = record(candidates=tuple(f"10.{a}.{b}.1:{p}" for a, b, p in cands), counter=counter, agent=agent)
    assert parse_endpoint(marshal_endpoint(rec)) == rec
