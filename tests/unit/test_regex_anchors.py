"""Every validation pattern is anchored at the very end: `$` also matches before a trailing newline,
so "laptop\\n" would pass for a name, a tag or a hash."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from meshctl.coord import records, verify

PACKAGE = Path(__file__).resolve().parents[2] / "meshctl"


def _pattern_literals(path: Path) -> list[tuple[int, str]]:
    """String arguments of re.compile / re.match / re.fullmatch / re.search calls."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                and node.func.attr in ("compile", "match", "fullmatch", "search") and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((node.lineno, arg.value))
            elif isinstance(arg, ast.JoinedStr):
                text = "".join(v.value for v in arg.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                out.append((node.lineno, text))
    return out


def test_no_pattern_in_the_tree_ends_with_a_dollar() -> None:
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
           for path in sorted(PACKAGE.rglob("*.py")) for line, text in _pattern_literals(path)
           if re.search(r"(?<!\\)\$", text)]
    assert not bad, "use \\Z (or fullmatch), not $:\n" + "\n".join(bad)


@pytest.mark.parametrize(("pattern", "good"), [
    (records.NAME_RE, "laptop"), (records.TAG_RE, "tag:ops"), (records.DOMAIN_RE, "acme.mesh"),
    (records.NETWORK_ID_RE, "ab" * 16), (records.SHA256_RE, "0" * 64), (records.TIME_RE, "2026-01-01T00:00:00Z"),
    (records.HOSTPORT_RE, "relay.example:3340"), (records.OWNER_RE, "alice@example.com"),
    (records.PINNABLE_RE, "README.md"), (verify.ROOT_RE, "root/1.root.json"), (verify.PEER_RE, "peers/a.json"),
    (verify.REQUEST_RE, "requests/a.json"),
])
def test_a_trailing_newline_is_refused(pattern: re.Pattern[str], good: str) -> None:
    assert pattern.match(good)
    for suffix in ("\n", "\r\n", "\n\n", " "):
        assert not pattern.match(good + suffix), repr(good + suffix)


def test_names_with_a_newline_are_refused_in_documents() -> None:
    with pytest.raises(records.RecordError, match="field name"):
        records.parse_root(records.marshal_root(records.RootDoc("ab" * 16, "acme", 1, 0, (), 1, (), 1))
                           .replace(b'"acme"', b'"acme\\n"'), "root/1.root.json")


def test_unicode_digits_are_not_digits() -> None:
    assert not records.TIME_RE.match("٢٠٢٦-01-01T00:00:00Z")
    assert not records.HOSTPORT_RE.match("relay.example:٣٣٤٠")
