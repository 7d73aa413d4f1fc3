"""Fixtures for the lab's own tests: a fresh Lab per test, skipped where it cannot run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lab_support import need_lab

from lab import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_lab()
    with Lab() as the_lab:
        yield the_lab
