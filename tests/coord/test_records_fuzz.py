"""Every repository parser returns a value or raises its documented ParseError, nothing else."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.coord import records, signing
from meshctl.errors import ParseError
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

PARSERS = (records.parse_root, records.parse_peer, records.parse_state)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


def _valid_peer() -> dict[str, object]:
    rec = records.PeerRecord("a" * 32, "laptop", SigningKey.generate().public(), NodePrivate.generate().public(),
                             DiscoPrivate.generate().public(), ("192.0.2.1:51820",), 1_700_000_000)
    return dict(json.loads(records.marshal_peer(rec)))


VALID_PEER = _valid_peer()


def _only_parse_errors(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data, "f.json")
        except ParseError:
            pass
    try:
        signing.parse_signatures(data, name="f.sig")
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    _only_parse_errors(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json(value: object) -> None:
    _only_parse_errors(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID_PEER)), json_values)
def test_one_field_of_a_valid_record_replaced(key: str, value: object) -> None:
    doc = dict(VALID_PEER)
    doc[key] = value
    try:
        rec = records.parse_peer(json.dumps(doc).encode(), "peers/laptop.json")
    except ParseError:
        return
    # Accepted only if it still round-trips to the same document.
    assert json.loads(records.marshal_peer(rec)) == {k: v for k, v in doc.items() if v != []}


def test_round_trips() -> None:
    data = records.marshal_peer(records.parse_peer(json.dumps(VALID_PEER).encode(), "p"))
    assert json.loads(data) == VALID_PEER
