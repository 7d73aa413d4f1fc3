"""Fixtures for the fault-injection lab tests (helpers in faults_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults_support import need_lab

from lab import Lab, open_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    need_lab()
    with open_lab("mflt") as the_lab:
        yield the_lab
