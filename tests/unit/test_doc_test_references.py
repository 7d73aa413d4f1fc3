"""SECURITY.md and README prove each promise with a test they name: every name must exist.

Tests move when the layout moves; a promise pointing at a test that is gone proves nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(tests/[A-Za-z0-9_/]+\.py)(?:::([A-Za-z0-9_]+))?")


def references(doc: str) -> list[tuple[str, str | None]]:
    return sorted(set(REFERENCE.findall((ROOT / doc).read_text())), key=str)


@pytest.mark.parametrize("doc", ["SECURITY.md", "README.md"])
def test_every_test_a_document_names_exists(doc: str) -> None:
    missing = []
    for path, name in references(doc):
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"^\s*(async\s+)?def {name}\b", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc} names tests that do not exist: {missing}"


def test_security_md_names_tests() -> None:
    # guards the check above against a pattern that silently matches nothing
    assert len(references("SECURITY.md")) > 50
