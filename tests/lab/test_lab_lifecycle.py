"""The lab leaves nothing behind: after an exception, SIGTERM, Ctrl-C, or a crash (stale)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab import Lab, LabError, cleanup_stale, poll
from lab.core import RUN_DIR
from meshctl.wg.userspace import SOCKET_DIR

pytestmark = pytest.mark.netns

TEST_PREFIX = "mlabtest"  # keeps these tests away from labs other tests run meanwhile
CHILD_TIMEOUT_S = 30


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split(" ", 1)[0] for line in out.stdout.splitlines()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_cleanup_after_exception(lab: Lab) -> None:
    del lab  # only for the skip; this test owns its own Lab
    with pytest.raises(RuntimeError, match="boom"), Lab() as inner:
        a = inner.host("a")
        inner.lan("lan", [a, inner.host("b")])
        sleeper = inner.popen(a, ["sleep", "60"])
        created, tmp = list(inner.namespaces), inner.tmp
        assert set(created) <= namespaces() and tmp.is_dir()
        raise RuntimeError("boom")
    assert not set(created) & namespaces()
    assert sleeper.poll() is not None
    assert not tmp.exists()
    assert not (RUN_DIR / f"{inner.prefix}-{inner.run_id}").exists()
    inner.close()  # idempotent


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go")
def test_a_killed_wireguard_go_leaves_no_socket_behind(lab: Lab) -> None:
    """wireguard-go, killed with its namespace, does not remove its socket in the directory all
    namespaces share: the lab does."""
    del lab  # only for the skip; this test owns its own Lab
    with Lab() as inner:
        ifname = f"{inner.run_id[:6]}wgt0"
        socket_path = SOCKET_DIR / f"{ifname}.sock"
        inner.run(inner.host("a"), ["wireguard-go", ifname])  # daemonizes: not one of the lab's processes
        poll(socket_path.exists, str(socket_path), 5)
    assert not socket_path.exists()


CHILD = textwrap.dedent("""
    import sys, time
    from lab import Lab
    with Lab(prefix=sys.argv[1]) as lab:
        a = lab.host("a")
        lab.nat_router("nat", "port-restricted", [a])
        p = lab.popen(a, ["sleep", "600"])
        print(p.pid, lab.tmp, *lab.namespaces, flush=True)
        time.sleep(600)
""")


def start_child() -> tuple[subprocess.Popen[str], int, Path, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, TEST_PREFIX], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert line, child.stderr.read() if child.stderr else "child died"
    pid, tmp, *created = line
    assert set(created) <= namespaces()
    return child, int(pid), Path(tmp), created


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_cleans_up(lab: Lab, sig: signal.Signals) -> None:
    del lab
    child, sleeper, tmp, created = start_child()
    child.send_signal(sig)
    child.wait(CHILD_TIMEOUT_S)
    assert child.returncode != 0
    assert not set(created) & namespaces()
    poll(lambda: not alive(sleeper), "the sleeper to die", 5)
    assert not tmp.exists()


def test_cleanup_stale_removes_crashed_runs_only(lab: Lab) -> None:
    del lab
    with Lab(prefix=TEST_PREFIX) as live:
        live.host("a")
        child, sleeper, tmp, created = start_child()
        child.kill()  # SIGKILL: no handler, no atexit, everything stays behind
        child.wait(CHILD_TIMEOUT_S)
        assert set(created) <= namespaces() and alive(sleeper)
        removed = cleanup_stale(TEST_PREFIX)
        assert sorted(removed) == sorted(created)
        assert not set(created) & namespaces()
        poll(lambda: not alive(sleeper), "the crashed run's sleeper to die", 5)
        assert not tmp.exists()
        assert set(live.namespaces) <= namespaces()  # a running lab is left alone
    assert cleanup_stale(TEST_PREFIX) == []
    with pytest.raises(ValueError):
        cleanup_stale("")


def test_two_labs_at_once_do_not_collide(lab: Lab) -> None:
    with Lab() as other:
        mine, theirs = lab.host("a"), other.host("a")
        assert mine.ns != theirs.ns
        lab.lan("lan", [mine, lab.host("b")])
        other.lan("lan", [theirs, other.host("b")])
        assert mine.ipv4 == theirs.ipv4  # same plan, separate worlds
        assert mine.link("lan").ifname != theirs.link("lan").ifname
        lab.run(mine, ["ping", "-c1", "-W2", str(mine.ipv4 + 1)])  # b, in this lab
    assert set(lab.namespaces) <= namespaces()


def test_errors_say_what_failed(lab: Lab) -> None:
    a = lab.host("a")
    with pytest.raises(LabError, match="exited 1"):
        lab.run(a, ["false"])
    assert lab.run(a, ["false"], check=False).returncode == 1
    with pytest.raises(LabError, match="unknown NAT profile"):
        lab.nat_router("nat", "carrier-grade", [a])
    with pytest.raises(LabError, match="did not start"):
        lab.udp_agent(a, 70000)
