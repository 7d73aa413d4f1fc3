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
