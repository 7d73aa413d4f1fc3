"""HuJSON (JSON with comments and trailing commas), strictly (pure).

The policy file is HuJSON like Tailscale's: `//` and `/* */` comments and one
trailing comma before `]` or `}` are allowed. Everything else is strict JSON,
with the same refusals as the signed repository files: duplicate keys, floats,
NaN/Infinity, lone surrogates, huge integers, deep nesting and oversized input.

The parser keeps the offset of every value and key so that the policy layer can
say `policy.hujson:LINE:COL` about anything it refuses. Hand-written recursive
descent, linear in the input, recursion bounded by MAX_DEPTH.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from meshctl.errors import ParseError

DEFAULT_FILENAME: Final = "policy.hujson"
MAX_TEXT_CHARS: Final = 1 << 20  # a policy for thousands of devices is well under 1 MiB
# Real policies nest 4 deep; the bound keeps hostile input from exhausting the stack.
MAX_DEPTH: Final = 32
MAX_INT_DIGITS: Final = 20  # Python refuses >4300 digits with ValueError; we stop far earlier

JsonValue: TypeAlias = "None | bool | int | str | list[JsonValue] | dict[str, JsonValue]"

_WHITESPACE: Final = frozenset(" \t\r\n")
_PLAIN_STRING_RUN: Final = re.compile(r'[^"\\\x00-\x1f]*')
_INT: Final = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER_TAIL: Final = re.compile(r"[0-9.eE+\-]")
_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_HEX4: Final = re.compile(r"[0-9a-fA-F]{4}")


class HujsonError(ParseError):
    """The policy text is not valid HuJSON; the message starts with `file:line:col:`."""

    def __init__(self, filename: str, line: int, col: int, reason: str) -> None:
        super().__init__(f"{filename}:{line}:{col}: {reason}")
        self.filename = filename
        self.line = line
        self.col = col
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Scalar:
    value: None | bool | int | str
    offset: int


@dataclass(frozen=True, slots=True)
class Array:
    items: tuple[Node, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Member:
    key: str
    key_offset: int
    value: Node


@dataclass(frozen=True, slots=True)
class Object:
    members: tuple[Member, ...]
    offset: int


Node: TypeAlias = Scalar | Array | Object


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed HuJSON text: the node tree plus what is needed to name positions."""

    root: Node
    filename: str
    _line_starts: tuple[int, ...] = field(repr=False, compare=False)

    def line_col(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._line_starts, offset) - 1
        return index + 1, offset - self._line_starts[index] + 1

    def where(self, offset: int) -> str:
        line, col = self.line_col(offset)
        return f"{self.filename}:{line}:{col}"

    def error(self, offset: int, reason: str) -> HujsonError:
        line, col = self.line_col(offset)
        return HujsonError(self.filename, line, col, reason)


def _line_starts(text: str) -> tuple[int, ...]:
    starts = [0]
    starts.extend(m.end() for m in re.finditer("\n", text))
    return tuple(starts)


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.pos = 0
        self.lines = _line_starts(text)

    def fail(self, reason: str, offset: int | None = None) -> HujsonError:
        at = self.pos if offset is None else offset
        index = bisect.bisect_right(self.lines, at) - 1
        return HujsonError(self.filename, index + 1, at - self.lines[index] + 1, reason)

    def skip_space(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch in _WHITESPACE:
                self.pos += 1
            elif text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated /* comment")
                self.pos = end + 2
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def value(self, depth: int) -> Node:
        self.skip_space()
        ch = self.peek()
        start = self.pos
        if ch == "{":
            return self.object(depth + 1)
        if ch == "[":
            return self.array(depth + 1)
        if ch == '"':
            return Scalar(self.string(), start)
        if ch == "-" or ch.isdigit():
            return Scalar(self.integer(), start)
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return Scalar(val, start)
        if ch == "":
            raise self.fail("unexpected end of input, expected a value")
        if self.text.startswith(("NaN", "Infinity"), self.pos):
            raise self.fail("NaN and Infinity are not allowed")
        raise self.fail(f"unexpected character {ch!r}, expected a value")

    def enter(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH} levels")

    def object(self, depth: int) -> Object:
        self.enter(depth)
        start = self.pos
        self.pos += 1  # "{"
        members: list[Member] = []
        seen: dict[str, int] = {}
        while True:
            self.skip_space()
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                return Object(tuple(members), start)
            if members:
                if ch != ",":
                    raise self.fail("expected ',' or '}' after an object member")
                self.pos += 1
                self.skip_space()
                if self.peek() == "}":  # one trailing comma is HuJSON
                    self.pos += 1
                    return Object(tuple(members), start)
                ch = self.peek()
            if ch != '"':
                if ch == "":
                    raise self.fail("unexpected end of input inside an object")
                raise self.fail(f"expected a string key, found {ch!r}")
            key_offset = self.pos
            key = self.string()
            if key in seen:
                first = bisect.bisect_right(self.lines, seen[key])
                raise self.fail(f"duplicate key {key!r} (first at line {first})", key_offset)
            seen[key] = key_offset
            self.skip_space()
            if self.peek() != ":":
                raise self.fail("expected ':' after an object key")
            self.pos += 1
            members.append(Member(key, key_offset, self.value(depth)))

    def array(self, depth: int) -> Array:
        self.enter(depth)
        start = self.pos
        self.pos += 1  # "["
        items: list[Node] = []
        while True:
            self.skip_space()
            ch = self.peek()
            if ch == "]":
                self.pos += 1
                return Array(tuple(items), start)
            if items:
                if ch != ",":
                    if ch == "":
                        raise self.fail("unexpected end of input inside an array")
                    raise self.fail("expected ',' or ']' after an array element")
                self.pos += 1
                self.skip_space()
                if self.peek() == "]":
                    self.pos += 1
                    return Array(tuple(items), start)
            items.append(self.value(depth))

    def string(self) -> str:
        text = self.text
        start = self.pos
        self.pos += 1  # opening quote
        parts: list[str] = []
        while True:
            run = _PLAIN_STRING_RUN.match(text, self.pos)
            assert run is not None  # the pattern matches the empty string
            parts.append(run.group())
            self.pos = run.end()
            if self.pos >= len(text):
                raise self.fail("unterminated string", start)
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(parts)
            if ch != "\\":
                raise self.fail(f"control character {ch!r} in a string")
            self.pos += 1
            esc = text[self.pos : self.pos + 1]
            if esc in _ESCAPES:
                parts.append(_ESCAPES[esc])
                self.pos += 1
            elif esc == "u":
                parts.append(self.unicode_escape())
            else:
                raise self.fail(f"invalid escape '\\{esc}' in a string")

    def hex4(self) -> int:
        at = self.pos + 1  # after the "u"
        digits = _HEX4.match(self.text, at)
        if digits is None:
            raise self.fail("invalid \\u escape: expected four hex digits")
        self.pos = digits.end()
        return int(digits.group(), 16)

    def unicode_escape(self) -> str:
        escape_at = self.pos - 1
        code = self.hex4()
        if 0xDC00 <= code <= 0xDFFF:
            raise self.fail("lone low surrogate in \\u escape", escape_at)
        if 0xD800 <= code <= 0xDBFF:
            if not self.text.startswith("\\u", self.pos):
                raise self.fail("lone high surrogate in \\u escape", escape_at)
            self.pos += 1
            low = self.hex4()
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.fail("lone high surrogate in \\u escape", escape_at)
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
        return chr(code)

    def integer(self) -> int:
        start = self.pos
        match = _INT.match(self.text, self.pos)
        if match is None:
            raise self.fail("invalid number")
        self.pos = match.end()
        if _NUMBER_TAIL.match(self.text, self.pos):
            raise self.fail("only integers are allowed (no fractions, exponents or leading zeros)", start)
        digits = match.group().lstrip("-")
        if len(digits) > MAX_INT_DIGITS:
            raise self.fail(f"integer with {len(digits)} digits is too large", start)
        return int(match.group())


def parse_document(text: str, filename: str = DEFAULT_FILENAME) -> Document:
    """Parse HuJSON text into a position-carrying tree; raise HujsonError on any fault."""
    if len(text) > MAX_TEXT_CHARS:
        raise HujsonError(filename, 1, 1, f"file is larger than {MAX_TEXT_CHARS} characters")
    parser = _Parser(text, filename)
    if text.startswith("\ufeff"):  # editors on Windows add a byte-order mark
        parser.pos = 1
    root = parser.value(0)
    parser.skip_space()
    if parser.pos != len(text):
        raise parser.fail("unexpected text after the top-level value")
    return Document(root, filename, parser.lines)


def to_python(node: Node) -> JsonValue:
    """The plain Python value of a node (dict keys keep their file order)."""
    if isinstance(node, Scalar):
        return node.value
    if isinstance(node, Array):
        return [to_python(item) for item in node.items]
    return {m.key: to_python(m.value) for m in node.members}


def parse_hujson(text: str, filename: str = DEFAULT_FILENAME) -> JsonValue:
    """HuJSON text -> Python value (None, bool, int, str, list, dict) or HujsonError."""
    return to_python(parse_document(text, filename).root)
