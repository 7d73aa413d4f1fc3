"""Fixtures for the endpoint-record end-to-end tests (helpers in endpoints_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from endpoints_support import need_lab

from lab import Lab, open_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_lab()
    with open_lab("mend") as the_lab:
        yield the_lab
