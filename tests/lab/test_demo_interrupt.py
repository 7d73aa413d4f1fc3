"""Finding 3 of issue 21: Ctrl-C during `make demo` printed a traceback (the cleanup itself
worked). A terminal's Ctrl-C reaches the whole foreground process group: the demo and every
command it runs at that moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab_support import need_lab

from lab.core import RUN_DIR

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def _namespaces(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 1)[0] for line in out.splitlines() if line.startswith(prefix)}


def _run_id_of(pid: int) -> str | None:
    for run_file in RUN_DIR.glob("mdemo-*"):
        if run_file.read_text().split()[:1] == [str(pid)]:
            return run_file.name.removeprefix("mdemo-")
    return None


@pytest.mark.parametrize("seconds_in", [3.0, 12.0])
def test_ctrl_c_during_the_demo_ends_in_one_line(seconds_in: float) -> None:
    need_lab("git")
    child = subprocess.Popen([sys.executable, "-m", "lab.demo"], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    run_id = None
    while run_id is None and time.monotonic() < deadline and child.poll() is None:
        run_id = _run_id_of(child.pid)
        time.sleep(0.1)
    assert run_id is not None, "the demo did not open its lab"
    time.sleep(seconds_in)  # building the lab, or a meshctl command of the walkthrough
    os.killpg(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "demo interrupted (Ctrl-C); the lab is removed"
    assert _namespaces(f"mdemo-{run_id}-") == set()
    del out
