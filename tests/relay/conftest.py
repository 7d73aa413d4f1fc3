"""Fixtures for the relay tests (helpers live in relay_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from relay_support import RelayMesh, make_relay_mesh


@pytest.fixture
def relay_mesh(tmp_path: Path) -> RelayMesh:
    return make_relay_mesh(tmp_path / "coord")
