from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_builder import Mesh, make_mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield make_mesh(tmp_path / "coord")

