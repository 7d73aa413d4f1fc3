"""Fixtures for the short soak (helpers in soak_support.py, a unique module name)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from soak_support import need_soak_tools

from lab import Lab, open_lab


@pytest.fixture
def soak_lab() -> Iterator[Lab]:
    reason = need_soak_tools()
    if reason:
        pytest.skip(reason)
    with open_lab("msoakt") as lab:
        yield lab
