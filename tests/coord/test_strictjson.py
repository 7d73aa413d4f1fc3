from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.coord import strictjson
from meshctl.coord.strictjson import JSONError


def load(text: str | bytes, limit: int = 1000) -> object:
    data = text.encode() if isinstance(text, str) else text
    return strictjson.loads(data, name="f.json", max_bytes=limit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, "a": 2}', "f.json: duplicate key 'a'"),
        ('{"a": 1.5}', "f.json: floating-point number '1.5' is not allowed"),
        ('{"a": 1e3}', "f.json: floating-point number '1e3' is not allowed"),
        ('{"a": NaN}', "f.json: NaN is not allowed"),
        ('{"a": Infinity}', "f.json: Infinity is not allowed"),
        ('{"a": ' + "9" * 30 + "}", "f.json: integer with 30 digits is too large"),
        ('{"a": ', "f.json:1:7: malformed JSON (Expecting value)"),
        ("[" * 20 + "]" * 20, "f.json: nested deeper than 16 levels"),
    ],
)
def test_refusals_name_the_file_and_reason(text: str, message: str) -> None:
    with pytest.raises(JSONError) as err:
        load(text)
    assert str(err.value) == message


def test_oversized_and_non_utf8() -> None:
    with pytest.raises(JSONError, match="f.json: file is 1001 bytes, more than the limit of 1000"):
        load("1" * 1001)
    with pytest.raises(JSONError, match="not valid UTF-8"):
        load(b'"\xff"')


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    assert load('{"a": "' + "[" * 50 + '"}') == {"a": "[" * 50}


def test_canonical_dump_is_sorted_and_round_trips() -> None:
    value = {"b": [1, {"z": "é", "a": True}], "a": None}
    data = strictjson.dumps(value)
    assert data.endswith(b"\n")
    assert data.index(b'"a"') < data.index(b'"b"')
    assert load(data) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_value_or_jsonerror(data: bytes) -> None:
    try:
        load(data, limit=200)
    except JSONError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_integer_only_json_round_trips(value: object) -> None:
    assert load(json.dumps(value), limit=100_000) == value
