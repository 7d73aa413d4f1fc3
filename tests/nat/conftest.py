"""Fixtures for the NAT-traversal tests (helpers live in natsupport.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from natsupport import CoturnFactory, Namespaces, need_root_and_tools


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[CoturnFactory]:
    need_root_and_tools("turnserver", "ss")
    factory = CoturnFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    need_root_and_tools("ip", "nft")
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


