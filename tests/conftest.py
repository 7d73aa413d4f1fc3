"""Suite-wide settings. Each area keeps its own fixtures in tests/<area>/conftest.py."""

from __future__ import annotations

import os

# tests/kernel runs inside a qemu guest booted by `make test-kernel` (scripts/test-kernel.sh);
# on the host it is not collected at all rather than reported as skipped.
collect_ignore = [] if os.environ.get("MESHCTL_IN_VM") == "1" else ["kernel"]
