"""Fixtures for the enrollment, rotation and expiry end-to-end tests (helpers in enroll_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from enroll_support import need_lab

from lab import Lab, open_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_lab()
    with open_lab("menr") as the_lab:
        yield the_lab
