"""Strict JSON for signed repository files (pure).

Signed files are parsed with rules that leave no room for two readers to
disagree: duplicate keys, floats, NaN/Infinity, huge integers, deep nesting,
non-UTF-8 and oversized input are refused. Files are written in one canonical
form (sorted keys, two-space indent, trailing newline) so diffs stay readable.
"""

from __future__ import annotations

import json
from typing import Any, Final

from meshctl.errors import ParseError

MAX_DEPTH: Final = 16  # records are at most 4 levels deep; 16 leaves room and stops stack abuse
MAX_INT_DIGITS: Final = 20  # serials and versions fit in 64 bits
JSONValue = Any  # validated by the schema layer that reads it


class JSONError(ParseError):
    """A repository file is not strict JSON; the message names the file."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Dup(key)
        out[key] = value
    return out


class _Dup(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


class _Refused(Exception):
    def __init__(self, what: str) -> None:
        self.what = what


def _no_float(text: str) -> float:
    raise _Refused(f"floating-point number {text[:20]!r} is not allowed")


def _no_constant(text: str) -> float:
    raise _Refused(f"{text} is not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer with {len(text)} digits is too large")
    return int(text)


def _too_deep(value: Any, limit: int) -> bool:
    """Nesting depth check, iterative so hostile input cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit and item:
                return True
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            if depth >= limit and item:
                return True
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def loads(data: bytes, *, name: str, max_bytes: int) -> JSONValue:
    """Parse strict JSON from `data`, naming `name` in every error."""
    if len(data) > max_bytes:
        raise JSONError(f"{name}: file is {len(data)} bytes, more than the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JSONError(f"{name}: not valid UTF-8") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except _Dup as exc:
        raise JSONError(f"{name}: duplicate key {exc.key!r}") from None
    except _Refused as exc:
        raise JSONError(f"{name}: {exc.what}") from None
    except json.JSONDecodeError as exc:
        raise JSONError(f"{name}:{exc.lineno}:{exc.colno}: malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise JSONError(f"{name}: nested deeper than {MAX_DEPTH} levels") from None
    # The C parser bounds recursion itself (RecursionError above); this enforces our tighter limit.
    # Fewer brackets than the limit cannot nest that deep (the walk costs a 10,000-peer sync 0.1 s).
    deep_enough = text.count("{") + text.count("[") >= MAX_DEPTH
    if deep_enough and isinstance(value, (dict, list)) and _too_deep(value, MAX_DEPTH):
        raise JSONError(f"{name}: nested deeper than {MAX_DEPTH} levels")
    return value


def dumps(value: JSONValue) -> bytes:
    """The canonical on-disk form."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
