"""The agent's control socket refuses a local user who is not root, at each of its three layers.

The real control server (Agent._serve_control) runs in the test's event loop; a forked
child drops to uid/gid 65534 (nobody) and tries to ask it for status. The layers are
opened one at a time by the test to show that each one alone refuses:
the state directory (0700), the socket file (0600), and the SO_PEERCRED uid check.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.agent import control
from meshctl.agent.daemon import Agent
from meshctl.fsutil import ensure_private_dir
from meshctl.settings import Settings

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # tmp_path's parents are 0700: nobody could not even reach the state dir's parent, which would
    # hide what the state dir itself does.
    parent = Path(tempfile.mkdtemp(prefix="meshctl-ctl-"))
    os.chmod(parent, 0o711)
    try:
        yield ensure_private_dir(parent / "state")
    finally:
        shutil.rmtree(parent)


def _ask_as_nobody(path: Path, write_fd: int) -> None:
    """Child: become nobody, ask for status; report 'EACCES', 'closed' or 'reply'."""
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(str(path))
        except PermissionError:
            outcome = "EACCES"
        else:
            try:
                sock.sendall(b'{"cmd": "status"}\n')
                outcome = "reply" if sock.recv(65536) else "closed"
            except (ConnectionResetError, BrokenPipeError):  # hung up before reading our request
                outcome = "closed"
        os.write(write_fd, outcome.encode())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        os.write(write_fd, f"child failed: {exc!r}".encode())
    finally:
        os._exit(0)


async def _outcome_for_nobody(path: Path) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        _ask_as_nobody(path, write_fd)
    os.close(write_fd)
    await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        return pipe.read().decode() or "child failed"


async def _with_agent_socket(state: Path, loosen_dir: bool, loosen_socket: bool) -> tuple[str, object]:
    agent = Agent(Settings(state_dir=state), accept_dns=False)
    server = await agent._serve_control()
    try:
        sock_path = agent.settings.control_socket
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600  # as the agent creates it
        if loosen_dir:
            os.chmod(state, 0o711)
        if loosen_socket:
            os.chmod(sock_path, 0o666)
        nobody = await _outcome_for_nobody(sock_path)
        as_root = await asyncio.get_running_loop().run_in_executor(
            None, control.query_agent, sock_path, {"cmd": "status"}, 5.0)
        return nobody, as_root
    finally:
        server.close()
        await server.wait_closed()


def test_state_dir_alone_refuses_nobody(state_dir: Path) -> None:
    nobody, as_root = asyncio.run(_with_agent_socket(state_dir, loosen_dir=False, loosen_socket=True))
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert nobody == "EACCES"
    assert isinstance(as_root, dict) and as_root["pid"] == os.getpid()


def test_socket_mode_alone_refuses_nobody(state_dir: Path) -> None:
    nobody, as_root = asyncio.run(_with_agent_socket(state_dir, loosen_dir=True, loosen_socket=False))
    assert nobody == "EACCES"
    assert isinstance(as_root, dict)


def test_peer_credentials_alone_refuse_nobody(state_dir: Path) -> None:
    # Directory and socket opened to everyone: nobody connects, and the agent hangs up unanswered.
    nobody, as_root = asyncio.run(_with_agent_socket(state_dir, loosen_dir=True, loosen_socket=True))
    assert nobody == "closed"
    assert isinstance(as_root, dict) and "passes" in as_root


def test_caller_allowed_is_root_or_the_agents_own_user() -> None:
    assert control.caller_allowed(0) and control.caller_allowed(os.geteuid())
    assert not control.caller_allowed(NOBODY)
