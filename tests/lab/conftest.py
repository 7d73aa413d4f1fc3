"""Fixtures for the lab's own tests: a fresh Lab per test, skipped where it cannot run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from meshctl.lab import Lab, lab_unavailable


def need_lab(*tools: str) -> None:
    """Skip, saying exactly what is missing, unless the lab (and `tools`) can run here."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_lab()
    with Lab() as the_lab:
        yield the_lab
