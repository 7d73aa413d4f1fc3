from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_builder import Mesh, make_mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    yield make_mesh(tmp_path / "coord")


@pytest.fixture
def admin_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an admin's meshctl and git commands (the key, and its trust/ beside it)."""
    return {"MESHCTL_ADMIN_KEY": str(tmp_path / "admin.key"), "GIT_AUTHOR_NAME": "a",
            "GIT_AUTHOR_EMAIL": "a@example.com", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@e.com"}
