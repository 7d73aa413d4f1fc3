"""Fixtures for the relay end-to-end tests (helpers in relay_e2e_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from relay_e2e_support import need_lab

from lab import Lab, open_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_lab()
    with open_lab("mrly") as the_lab:
        yield the_lab
