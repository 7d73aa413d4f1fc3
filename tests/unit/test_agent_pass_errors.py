"""A pass that raises something unexpected is logged and retried; it does not end the agent."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from meshctl.agent import daemon
from meshctl.errors import MeshctlError
from meshctl.settings import Settings


class _Boom(RuntimeError):
    pass


def _agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> daemon.Agent:
    agent = daemon.Agent(Settings(state_dir=tmp_path), accept_dns=False)
    agent._extensions_started = True  # no NAT traversal or DNS in a unit test

    def failing_pass(*_args: object) -> daemon.PassResult:
        raise error

    monkeypatch.setattr(agent, "_pass_blocking", failing_pass)
    return agent


def test_unexpected_exception_in_a_pass_is_reported_not_fatal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    agent = _agent(tmp_path, monkeypatch, _Boom("bug"))
    with caplog.at_level(logging.ERROR, logger="meshctl.agent.daemon"):
        ok = asyncio.run(agent._pass())
    assert ok is False
    assert agent.last_error == "internal error in the pass (_Boom); see the agent log"
    assert "unexpected: the pass raised _Boom" in caplog.text
    assert "Traceback" in caplog.text  # the log keeps the traceback for a bug report


def test_expected_failure_keeps_its_own_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent(tmp_path, monkeypatch, MeshctlError("origin: repository unreachable"))
    assert asyncio.run(agent._pass()) is False
    assert agent.last_error == "origin: repository unreachable"


def test_a_refused_state_keeps_its_exit_code_for_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshctl.errors import EXIT_REFUSED, VerificationError

    agent = _agent(tmp_path, monkeypatch, VerificationError("state.json: expired at 2026-12-01 00:00 UTC"))
    assert asyncio.run(agent._pass()) is False
    assert agent.last_exit_code == EXIT_REFUSED  # `meshctl sync` through the agent exits 3, as without it


def test_a_removed_node_is_told_once_and_not_retried_every_few_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from meshctl.agent.inputs import NotAMember

    agent = _agent(tmp_path, monkeypatch, NotAMember("a was removed from mesh acme at serial 9"))
    with caplog.at_level(logging.WARNING, logger="meshctl.agent.daemon"):
        for _ in range(3):
            assert asyncio.run(agent._pass()) is False
    assert caplog.text.count("was removed from mesh acme at serial 9") == 1
    assert agent._retry_delay() == agent.sync_interval_s


def test_the_removal_is_said_as_such() -> None:
    import ipaddress

    from meshctl.agent.inputs import NotAMember, require_member
    from meshctl.coord.netmap import NetMap, NetworkSettings
    from meshctl.coord.node_state import NodeConfig

    nm = NetMap(NetworkSettings("a" * 32, "acme", ipaddress.IPv4Network("100.64.0.0/10"),
                                ipaddress.IPv6Network("fd00::/48"), "acme.mesh"), 9, 0, "0" * 64, (), self_name="a")
    cfg = NodeConfig("a", "git://x/y", "main", "sha256:0", "a" * 32)
    with pytest.raises(NotAMember, match="^a was removed from mesh acme at serial 9$"):
        require_member(nm, cfg, was_member=True)
    with pytest.raises(NotAMember, match="^a is not a member of mesh acme yet"):
        require_member(nm, cfg, was_member=False)
