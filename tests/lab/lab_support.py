"""Helpers for the lab's own tests (a module with a unique name: pytest shares `conftest`)."""

from __future__ import annotations

import shutil

import pytest

from lab import lab_unavailable


def need_lab(*tools: str) -> None:
    """Skip, saying exactly what is missing, unless the lab (and `tools`) can run here."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")
