"""Suite-wide settings. Each area keeps its own fixtures in tests/<area>/conftest.py."""

from __future__ import annotations

import os

import pytest
import secret_scan

# tests/kernel runs inside a qemu guest booted by `make test-kernel` (scripts/test-kernel.sh);
# on the host it is not collected at all rather than reported as skipped.
collect_ignore = [] if os.environ.get("MESHCTL_IN_VM") == "1" else ["kernel"]


def pytest_configure(config: pytest.Config) -> None:
    # The suite-wide check that no private key it generated was printed or logged (tests/secret_scan.py).
    secret_scan.register(config)
