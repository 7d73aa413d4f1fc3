"""Fixtures for tests/router (helpers live in routerlab.py)."""

from __future__ import annotations

from routerlab import dummy_ns

__all__ = ["dummy_ns"]
