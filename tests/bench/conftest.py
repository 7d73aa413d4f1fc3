"""The bench's own tests: its pure parts (bench/peers_*.py, bench/procstat.py) are imported from bench/."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
