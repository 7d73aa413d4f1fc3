"""Fixtures for the packaging tests (install script, units, the one-file binary)."""

from __future__ import annotations

import pytest
from packaging_support import binary_argv


@pytest.fixture(scope="session")
def meshctl_bin() -> list[str]:
    """argv of the binary under test; skips (saying how to get one) when there is none."""
    argv, reason = binary_argv()
    if argv is None:
        pytest.skip(reason)
    return argv
