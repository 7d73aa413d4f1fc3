"""A pass runs with the cyclic collector paused and leaves it as it found it."""

from __future__ import annotations

import gc

import pytest

from meshctl.agent.gcpause import collector_paused


def test_paused_inside_and_enabled_again_after_even_on_error() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_already_paused_stays_paused() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_run_pass_runs_with_the_collector_paused() -> None:
    from meshctl.agent import sync_pass

    seen: list[bool] = []

    class Settings:
        @property
        def state_dir(self) -> None:
            seen.append(gc.isenabled())
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        sync_pass.run_pass(Settings(), 0)  # type: ignore[arg-type]
    assert seen == [False] and gc.isenabled()


def test_a_sync_skips_the_final_collection_at_exit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`meshctl sync` freezes what it holds at exit (the interpreter's last full collection walks
    every live object: a quarter of a 10,000-peer no-op's CPU); exit handlers still run after."""
    import subprocess
    import sys

    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: sys.stderr.write(f'frozen={gc.get_freeze_count()}\\n'))\n"
             "from meshctl.cli.app import main\n"
             "sys.argv = ['meshctl', 'sync', '--dry-run']\n"
             "main()\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={"MESHCTL_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0  # no node here: the sync fails, and exits like any command
    frozen = [line for line in proc.stderr.splitlines() if line.startswith("frozen=")]
    assert frozen and int(frozen[0].split("=")[1]) > 0, proc.stderr
