from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.errors import ParseError
from meshctl.policy.hujson import (
    MAX_DEPTH,
    MAX_TEXT_CHARS,
    Array,
    HujsonError,
    Object,
    parse_document,
    parse_hujson,
)


def test_comments_and_trailing_commas() -> None:
    text = """
    // a line comment
    {
        /* a block
           comment */
        "acls": [1, 2, -3,],   // trailing comma in a list
        "x": {"y": null, "z": true,},
    }
    """
    assert parse_hujson(text) == {"acls": [1, 2, -3], "x": {"y": None, "z": True}}


def test_strings_and_escapes() -> None:
    assert parse_hujson(r'"a\"b\\c\/d\n\t\u00e9\ud83d\ude00"') == 'a"b\\c/d\n\té😀'
    assert parse_hujson('"// not a comment /* nor this */"') == "// not a comment /* nor this */"


def test_keys_keep_file_order_and_offsets() -> None:
    doc = parse_document('{"b": 1,\n "a": [2]}')
    assert isinstance(doc.root, Object)
    assert [m.key for m in doc.root.members] == ["b", "a"]
    assert doc.where(doc.root.members[1].key_offset) == "policy.hujson:2:2"
    assert isinstance(doc.root.members[1].value, Array)


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ('{"a": 1,\n "a": 2}', "2:2", "duplicate key 'a' (first at line 1)"),
        ("[1.5]", "1:2", "only integers are allowed"),
        ("[1e3]", "1:2", "only integers are allowed"),
        ("[01]", "1:2", "only integers are allowed"),
        ("[NaN]", "1:2", "NaN and Infinity are not allowed"),
        ("[1,,]", "1:4", "unexpected character ','"),
        ("[,]", "1:2", "unexpected character ','"),
        ('{"a": 1,,}', "1:9", "expected a string key"),
        ("{'a': 1}", "1:2", "expected a string key"),
        ('{"a" 1}', "1:6", "expected ':'"),
        ("[1 2]", "1:4", "expected ',' or ']'"),
        ('"abc', "1:1", "unterminated string"),
        ('"a\tb"', "1:3", "control character"),
        (r'"\x"', "1:3", "invalid escape"),
        (r'"\ud800"', "1:2", "lone high surrogate"),
        (r'"\udc00"', "1:2", "lone low surrogate"),
        ("/* open", "1:1", "unterminated /* comment"),
        ("{} {}", "1:4", "unexpected text after the top-level value"),
        ("", "1:1", "unexpected end of input"),
        ("[1, 2", "1:6", "unexpected end of input inside an array"),
        ("[" + "9" * 21 + "]", "1:2", "too large"),
    ],
)
def test_refusals_name_line_and_column(text: str, where: str, reason: str) -> None:
    with pytest.raises(HujsonError) as info:
        parse_hujson(text)
    assert str(info.value).startswith(f"policy.hujson:{where}: ")
    assert reason in info.value.reason


def test_depth_and_size_bounds() -> None:
    parse_hujson("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(HujsonError, match="nested deeper"):
        parse_hujson("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(HujsonError, match="larger than"):
        parse_hujson(" " * (MAX_TEXT_CHARS + 1))
    # A very deep input is refused, not a RecursionError.
    with pytest.raises(HujsonError):
        parse_hujson("[" * 100_000)


def test_filename_in_errors_and_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match=r"^other\.hujson:1:1: "):
        parse_hujson("x", filename="other.hujson")


def test_byte_order_mark_is_skipped() -> None:
    assert parse_hujson("\ufeff{}") == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**18), 10**18) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_plain_json_round_trips(value: object) -> None:
    assert parse_hujson(json.dumps(value)) == value
    assert parse_hujson(json.dumps(value, indent=1, ensure_ascii=False)) == value


@given(json_values, st.sampled_from(["// c\n", "/* c */", " ", "\n\t"]))
def test_comments_between_tokens_change_nothing(value: object, comment: str) -> None:
    text = json.dumps(value, separators=(" , ", " : "))
    # Insert the comment at every token boundary outside strings: after each separator.
    commented = comment + text.replace(" , ", f" ,{comment}").replace(" : ", f" :{comment}")
    assert parse_hujson(commented + comment) == value


@settings(max_examples=300)
@given(st.text(alphabet='{}[],:"\\/*-0123456789.eEtrufalsn \n\tx\ud7ff', max_size=80))
def test_garbage_gives_value_or_parse_error(text: str) -> None:
    # Hypothesis' per-example deadline bounds the time.
    try:
        parse_hujson(text)
    except HujsonError as exc:
        assert exc.line >= 1 and exc.col >= 1


@given(st.binary(max_size=200))
def test_arbitrary_text_gives_value_or_parse_error(data: bytes) -> None:
    try:
        parse_hujson(data.decode("utf-8", errors="replace"))
    except HujsonError:
        pass
