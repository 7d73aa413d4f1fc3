"""Fixtures for tests/wg (the helpers live in wglab.py, importable by test modules)."""

from __future__ import annotations

from wglab import lab

__all__ = ["lab"]
